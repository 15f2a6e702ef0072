import schemas  # noqa: F401,E402 -- installs the Beam import-noise filter first (schemas/quiet.py)
