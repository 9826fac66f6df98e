"""`lfr-edge`: a thin argparse front. Each module parses one command group and calls typed functions."""
