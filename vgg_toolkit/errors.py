"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class VggtkError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class RegistryError(VggtkError, KeyError):
    """A registry name that is unknown or claimed twice."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(VggtkError):
    """Weights that cannot be read or do not fit the model."""
