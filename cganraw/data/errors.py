"""The two errors of cganraw.data: both ValueErrors, so a command line prints them as one line."""


class DataError(ValueError):
    """A data file is missing, unreadable or not what it should be; the message names the file."""


class MissingDataError(DataError):
    """The files of a dataset are not on this machine (and were not, or could not be, downloaded)."""
