"""Restore drills: scheduled test restores into scratch space, integrity checks, sealed reports (issue 13).

``model.py`` holds the report every other module passes around; ``integrity.py``
the per-table digests taken at backup time and compared after a drill's
restore; ``runner.py`` runs one drill; ``report.py`` renders it (Markdown,
HTML with a chart); ``seal.py`` keys it with a MAC and keeps a copy in the
repository.
"""
