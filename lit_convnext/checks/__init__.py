"""The file checks behind ``lit-convnext doctor`` and the check before training: every file decoded and hashed in
worker processes (``file_checks``), results remembered by path, size and mtime (``check_cache``), the folder report
(``scan``) and the bad-file list a run reads (``bad_files``). Needs no torch."""
