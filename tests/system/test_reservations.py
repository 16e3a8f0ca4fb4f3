#!/usr/bin/env python3
"""Persistent reservations that survive a restart (APTPL): two initiators register with APTPL=1 and one
takes a Write Exclusive reservation; after ispaced is stopped and started again on the same file LUN,
READ KEYS and READ RESERVATION report them and the other initiator's write meets RESERVATION CONFLICT.
Then a REGISTER with APTPL=0 turns persistence off (SPC-4: the most recent REGISTER's APTPL governs the
logical unit), and after another restart nothing is left.

Usage: test_reservations.py ISPACED_BINARY
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:reservations"
OWNER = "iqn.2026-11.org.ispace:owner"
OTHER = "iqn.2026-11.org.ispace:other"
KEY = 0x1122334455667788
check = ispace_testlib.Checks()

RESERVATION_CONFLICT = 0x18
WRITE_EXCLUSIVE = 1


def prout(client, service_action, key=0, sa_key=0, aptpl=False, type_=0):
    params = struct.pack(">QQI", key, sa_key, 0) + bytes([0x01 if aptpl else 0x00, 0, 0, 0])
    cdb = bytes([0x5F, service_action, type_, 0, 0]) + struct.pack(">I", len(params)) + bytes([0])
    return client.wait_status(client.scsi(cdb, data=params))[0]


def prin(client, service_action):
    cdb = bytes([0x5E, service_action, 0, 0, 0, 0, 0]) + struct.pack(">H", 1024) + bytes([0])
    return client.wait_status(client.scsi(cdb, read_length=1024))


# Registrations belong to the I_T nexus, whose name includes the ISID: like real initiators, each one
# keeps its ISID across logins.
ISIDS = {OWNER: bytes.fromhex("800000000001"), OTHER: bytes.fromhex("800000000002")}


def logged_in(port, initiator):
    client = iscsi_raw.Client("127.0.0.1", port, initiator=initiator, isid=ISIDS[initiator])
    client.login(IQN)
    client.test_unit_ready()  # takes the power-on unit attention
    return client


def start(binary, lun, scratch):
    return ispace_testlib.Ispaced(binary, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", lun],
                                  log_path=os.path.join(scratch, "ispaced.log")).start()


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("reservations")
    image = os.path.join(scratch, "lun.img")
    daemon = start(binary, image + ",size=64M,thin", scratch)
    try:
        owner = logged_in(daemon.port, OWNER)
        check(prout(owner, 0x00, sa_key=KEY, aptpl=True) == 0, "REGISTER with APTPL=1")
        check(prout(owner, 0x01, key=KEY, type_=WRITE_EXCLUSIVE) == 0, "RESERVE Write Exclusive")
        other = logged_in(daemon.port, OTHER)
        check(prout(other, 0x00, sa_key=0xABCD, aptpl=True) == 0, "another initiator registers with APTPL=1")
        owner.close()
        other.close()
    finally:
        check(daemon.stop() == 0, "ispaced stops cleanly")
    check(os.path.exists(image + ".pr"), "the reservation state is kept beside the LUN file (lun.img.pr)")

    daemon = start(binary, image + ",size=64M,thin", scratch)
    try:
        owner = logged_in(daemon.port, OWNER)
        status, data = prin(owner, 0x00)  # READ KEYS
        keys = [struct.unpack(">Q", data[8 + 8 * i:16 + 8 * i])[0] for i in range((len(data) - 8) // 8)] \
            if status == 0 and len(data) >= 8 else []
        check(KEY in keys and 0xABCD in keys, f"after a restart READ KEYS holds both keys ({[hex(k) for k in keys]})")
        status, data = prin(owner, 0x01)  # READ RESERVATION
        has = status == 0 and len(data) >= 24 and struct.unpack(">I", data[4:8])[0] >= 16
        check(has and struct.unpack(">Q", data[8:16])[0] == KEY and data[21] & 0x0F == WRITE_EXCLUSIVE,
              "after a restart the Write Exclusive reservation is still held")
        other = logged_in(daemon.port, OTHER)
        status = other.wait_status(other.scsi(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), data=bytes(512)))[0]
        check(status == RESERVATION_CONFLICT, f"another initiator's write meets RESERVATION CONFLICT ({status:#x})")
        # REGISTER again with the same key and APTPL=0: persistence is off for the whole LU.
        check(prout(owner, 0x00, key=KEY, sa_key=KEY, aptpl=False) == 0, "REGISTER with APTPL=0")
        owner.close()
        other.close()
    finally:
        check(daemon.stop() == 0, "ispaced stops cleanly")

    daemon = start(binary, image + ",size=64M,thin", scratch)
    try:
        owner = logged_in(daemon.port, OWNER)
        status, data = prin(owner, 0x00)
        check(status == 0 and len(data) >= 8 and struct.unpack(">I", data[4:8])[0] == 0,
              "after APTPL was turned off, a restart leaves no registration")
        owner.close()
    finally:
        check(daemon.stop() == 0, "ispaced stops cleanly")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
