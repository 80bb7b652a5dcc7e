__version__ = "0.1.0"  # written into journals and summaries: outputs stay byte-identical across the 0.1 line
