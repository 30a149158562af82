"""D-Bus names in one place: mushishi's own interface, the bus daemon's, and the systemd
manager gpud drives."""

from __future__ import annotations

# io.mushishi.GpuMode1 (DESIGN.md §6), owned by mushishi-gpud on the system bus.
BUS_NAME = "io.mushishi.GpuMode1"
OBJECT_PATH = "/io/mushishi/GpuMode1"
INTERFACE = "io.mushishi.GpuMode1"

# Domain errors map to these D-Bus error names (one place: gpud's dbus_api).
ERROR_PREFIX = "io.mushishi.GpuMode1.Error."
ERROR_BUSY = ERROR_PREFIX + "Busy"            # the busy probe found work in flight
ERROR_HELD = ERROR_PREFIX + "Held"            # a hold exists on the current mode
ERROR_UNKNOWN_MODE = ERROR_PREFIX + "UnknownMode"
ERROR_SWITCH_FAILED = ERROR_PREFIX + "SwitchFailed"
ERROR_UNKNOWN_HOLD = ERROR_PREFIX + "UnknownHold"
ERROR_SWITCHING = ERROR_PREFIX + "Switching"      # a switch is already in progress
ERROR_NOT_ACTIVE = ERROR_PREFIX + "NotActive"     # HoldMode on a mode that is not active
ERROR_NOT_HOLDER = ERROR_PREFIX + "NotHolder"     # ReleaseHold by someone else's connection
ERROR_BAD_REASON = ERROR_PREFIX + "BadReason"     # SwitchModeWithReason with an unknown reason

# The bus daemon (org.freedesktop.DBus) and the standard interfaces every object has.
DBUS_BUS_NAME = "org.freedesktop.DBus"
DBUS_OBJECT_PATH = "/org/freedesktop/DBus"
DBUS_INTERFACE = "org.freedesktop.DBus"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_INTERFACE = "org.freedesktop.DBus.Introspectable"
DBUS_ERROR_FAILED = "org.freedesktop.DBus.Error.Failed"
DBUS_ERROR_NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
DBUS_ERROR_NO_SERVER = "org.freedesktop.DBus.Error.NoServer"
DBUS_ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
# What a caller gets when nobody owns the name it called.
DBUS_ERRORS_NO_OWNER = ("org.freedesktop.DBus.Error.ServiceUnknown",
                        "org.freedesktop.DBus.Error.NameHasNoOwner")

# systemd's own manager API (org.freedesktop.systemd1(5)).
SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_OBJECT_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER_INTERFACE = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SYSTEMD_SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
SYSTEMD_TIMER_INTERFACE = "org.freedesktop.systemd1.Timer"
SYSTEMD_UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
