"""OPC-UA connector (asyncua): config (importable without asyncua), connector, security, browse."""
