"""One module per group of `backstop` commands; core/cli/parser.py lists them (its COMMANDS table)."""
