"""Legacy scp (``scp -O``): the sans-IO protocol, the sink and the source."""
