"""Generic OTP-style supervision for pykka actors (the concrete tree: yptask.supervisors)."""
