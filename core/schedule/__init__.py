"""Schedules: cron-timed backups, verifications, retention, key rotation and drills (`backstop daemon`).

``config`` (the ``schedules:`` entries), ``slots`` (pure time arithmetic),
``clock`` (real and fake time), ``scheduler`` (claims slots and runs them),
``actions`` (what each action does through the Engine) and ``daemon`` (the
long-running process: signals, sd_notify, reload).
"""
