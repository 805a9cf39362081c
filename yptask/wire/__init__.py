"""The wire formats: the BERT codec, BERT-RPC packets and framing, bounded decoding. Pure."""
