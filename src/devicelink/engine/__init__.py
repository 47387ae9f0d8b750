"""One device's engine: states, the grant, and what apps may have of it (see ``device.py``)."""

from devicelink.engine.answers import Issued, Status, StepUpDone, StepUpPending, TokenQuery, Unpaired
from devicelink.engine.device import Device

__all__ = ["Device", "Issued", "Status", "StepUpDone", "StepUpPending", "TokenQuery", "Unpaired"]
