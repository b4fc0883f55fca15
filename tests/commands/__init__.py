"""The commands, one file per command family, driven through the command line."""
