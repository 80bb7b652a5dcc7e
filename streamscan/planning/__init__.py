"""planning: which matrices a scan scores (targets, roles, type keys, expert slices, quantized pairs)."""
