"""Device answers that end a command unsuccessfully, worded as RouterOS words them."""

from __future__ import annotations


class DeviceError(Exception):
    """A command failed; `text` is the exact line the device prints on stdout."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def failure(message: str) -> DeviceError:
    return DeviceError(f"failure: {message}")


def syntax_error(column: int) -> DeviceError:
    return DeviceError(f"syntax error (line 1 column {column})")


def bad_command(word: str, column: int) -> DeviceError:
    return DeviceError(f"bad command name {word} (line 1 column {column})")


def expected_end(column: int) -> DeviceError:
    return DeviceError(f"expected end of command (line 1 column {column})")


def invalid_value(argument: str) -> DeviceError:
    return DeviceError(f"invalid value for argument {argument}")


def no_matching_value(argument: str) -> DeviceError:
    return DeviceError(f"input does not match any value of {argument}")


NO_SUCH_ITEM = "no such item"
NOT_ENOUGH_SPACE = "not enough space"
FILE_EXISTS = "file already exists"
INVALID_PARAMETER = "invalid parameter"
DISK_IN_USE = "disk is in use"
