"""results: the journal, the Spectrum outputs, selections, reports and the inspect overview."""
