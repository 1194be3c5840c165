"""Storage targets: the same repository layout on a directory or an S3 bucket."""
