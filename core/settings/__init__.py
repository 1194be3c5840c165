"""Settings that cannot be weakened quietly: schedules, retention and encryption apply once approved.

``sections`` reads the guarded sections from the raw config, ``approved``
keeps the settings in force (sealed in the repository, cached in the
catalog), ``effective`` combines them with the file into the config every
command uses. Approving is ``core.ops.settings.approve_settings``.
"""
