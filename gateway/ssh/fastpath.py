"""Cheaper per-packet work in asyncssh for the relay's bulk path, same bytes on the wire.

Measured on ``conduit serve`` relaying ``head -c 1G /dev/zero`` (bench/ssh_relay.py, py-spy
``--gil``): 38% of the main thread's GIL time was inside ``transport.write``, because every
SSH packet was its own ``send()`` syscall, and asyncssh (checked against 2.24.1) sends an
empty ``MSG_IGNORE`` packet before every packet once encryption is on, so a 32 KiB data
packet cost two syscalls, two encryptions and two packet framings. ``install()`` changes
eight things, process-wide, once:

1. **Writes coalesced.** ``SSHConnection._send`` queues the encrypted packet and the first
   packet of a batch schedules one ``transport.write`` of the whole batch with
   ``loop.call_soon``: the packets made while handling one read (a dozen 32 KiB data packets
   and their window adjusts) leave in one syscall, in the same order, within the same loop
   iteration. asyncssh closes a connection with ``call_soon(transport.abort)``, which runs
   after a flush already scheduled, so a last ``MSG_DISCONNECT`` still leaves first.
2. **No ``MSG_IGNORE`` before each packet under an AEAD cipher** (aes*-gcm@openssh.com,
   chacha20-poly1305@openssh.com). The empty ignore packet is a countermeasure for CBC
   modes (RFC 4251 section 9.3.1); an AEAD packet's nonce is its sequence number and its
   padding is encrypted and authenticated, so it protects nothing there. OpenSSH does not
   send them either. Other ciphers keep asyncssh's behaviour.
3. **GCM: one ``AESGCM`` per key**, not a new one (and key schedule) per packet.
4. **Delayed ACKs sent at once after a small read** (``TCP_QUICKACK``). OpenSSH sets
   ``TCP_NODELAY`` only for interactive sessions, so ``ssh gw cmd``, scp and sftp clients
   (and sshd on the asset) hold a second small packet until the first is acknowledged
   (Nagle), while Linux delays that ACK up to 40 ms: connect + exec ``true`` through the
   relay took 152 or 192-200 ms (bimodal), and 52-60 ms with this. Reads of
   ``QUICKACK_BELOW`` bytes or more (bulk) are left to delayed ACKs, which cost less there,
   and only a connection's first ``QUICKACK_READS`` small reads are hurried: uvloop's
   ``setsockopt`` builds a socket object each time, ~9% of the event loop's CPU per
   keystroke in a long interactive session, where OpenSSH sets TCP_NODELAY anyway.
5. **Packet log lines not formatted when they cannot be logged**: asyncssh builds the
   message for every packet and only then checks its debug level (3 for packets).
6. **Received AES-GCM packets are framed without copies** (``_recv_pkthdr``). Once a
   connection is authenticated and no key exchange runs, channel data, extended data,
   window adjusts and ignore packets are decrypted straight from the input buffer, all
   whole packets of one read in one call (asyncssh sliced the rest of the buffer twice per
   packet and copied each packet three more times). Channel data goes to the channel as
   asyncssh's ``_process_data`` would hand it; the others to asyncssh's own handlers.
   Anything else - other packet types, a tag that does not verify, an oversized or
   malformed packet, an unknown or closed channel, a window overrun, packet logging on - is
   left untouched (the IV is not advanced) for asyncssh's path, which decrypts it again
   and handles or refuses it exactly as before.
7. **Sent AES-GCM packets are sealed in one buffer** (``send_packet``): in the same state,
   the packet is laid out once and encrypted into the wire buffer (``encrypt_into``), not
   concatenated five times; random padding comes from a pool refilled by ``os.urandom``.
   Packets before authentication, during a key exchange, when a re-key is due, or under
   other ciphers take asyncssh's path, which also starts the re-key.
8. **One keepalive timer per connection, not one per read** (``_reset_keepalive_timer``):
   a read notes the time; the timer, when it fires, sends the keepalive only if nothing
   was received for the interval (asyncssh's rule), else waits out the rest. asyncssh
   cancelled and re-created a timer for every read.

Measured against bench.bare_relay (asyncssh without any of this) in bench/ssh_relay.py.

These replace private asyncssh methods, so ``install()`` first checks that asyncssh is the
version all this was verified against (``VERIFIED_ASYNCSSH``, the version the lock file
pins): on any other version nothing is changed, a warning naming both versions is logged
once, and the gateway runs on plain asyncssh (slower, same behaviour). Every replaced
attribute is then checked too: if asyncssh no longer has it, nothing is changed, an error
is logged and tests/test_ssh_fastpath.py fails.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
import time
from typing import Any

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_CHANNEL_WINDOW_ADJUST,
    MSG_IGNORE,
    MSG_USERAUTH_LAST,
)
from asyncssh.crypto import cipher as _cipher
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket, SSHPacketLogger, String
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

_AEAD = (GCMEncryption, ChachaEncryption)
_EMPTY_IGNORE = (String(b""),)
_CONNECTION_INTERNALS = (
    "_send", "send_packet", "data_received", "_recv_pkthdr", "_finish_recv_packet",
    "_set_keepalive_timer", "_reset_keepalive_timer", "_keepalive_timer_callback",
)  # fmt: skip
# Set in SSHConnection.__init__ and read by the receive fast path.
_CONNECTION_STATE = (
    "_inpbuf", "_recv_encryption", "_decompressor", "_kex", "_auth_complete", "_channels",
    "_recv_seq", "_max_recv_pktlen", "_transport", "_send_encryption", "_kex_complete",
    "_compressor", "_rekey_bytes_sent", "_rekey_bytes", "_rekey_seconds", "_rekey_time",
    "_send_enchdrlen", "_send_blocksize", "_send_seq", "_keepalive_timer",
    "_keepalive_interval", "_loop",
)  # fmt: skip
# Packets the receive fast path hands over itself; asyncssh's path takes every other one.
_FAST_RECV = frozenset(
    (MSG_IGNORE, MSG_CHANNEL_WINDOW_ADJUST, MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA)
)
_GCM_BLOCK = 16
_GCM_INTERNALS = ("encrypt_and_sign", "verify_and_decrypt", "_update_iv")
_PACKET_DEBUG_LEVEL = 3  # SSHLogger.packet logs only at this asyncssh debug level or above
_GCM_TAG_BYTES = 16
QUICKACK_BELOW = 16 * 1024
QUICKACK_READS = 64  # per connection: log-in, channel set-up and a short command's start
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
# The asyncssh release whose private methods this module was read and tested against. A
# new release must be read again (each replaced method and the state it reads) before
# this changes, with the lock file's pin.
VERIFIED_ASYNCSSH = "2.24.1"
_installed = False
_version_refused = False  # the other-version warning has been logged


def _send(self: Any, data: bytes) -> None:
    """``SSHConnection._send``: queue; the first packet of a batch schedules the write."""
    transport = self._transport
    if not transport:
        return
    pending: list[bytes] | None = self._conduit_pending
    if pending is None:
        self._conduit_pending = [data]
        self._loop.call_soon(_flush, self, transport)
    else:
        pending.append(data)


def _flush(conn: Any, transport: Any) -> None:
    pending: list[bytes] | None = conn._conduit_pending  # noqa: SLF001
    conn._conduit_pending = None  # noqa: SLF001
    if not pending or transport.is_closing():
        return  # aborted or lost meanwhile: asyncssh dropped unsent data there too
    try:
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
    except ConnectionError:  # as asyncssh's own _send
        pass


def _wrap_data_received(original: Any) -> Any:
    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        if self._conduit_quickacks and len(data) < QUICKACK_BELOW:
            self._conduit_quickacks -= 1
            sock = self.__dict__.get("_conduit_sock")
            if sock is None:
                transport = self._transport
                sock = transport.get_extra_info("socket") if transport else None
                self._conduit_sock = sock if sock is not None else False
            if sock:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:  # not TCP (a tunnel or a Unix socket): nothing to hurry
                    self._conduit_sock = False
        original(self, data, datatype)

    data_received.__wrapped__ = original  # type: ignore[attr-defined]
    return data_received


def _wrap_log_packet(original: Any) -> Any:
    def _log_packet(self: Any, msg: str, pkttype: int, pktid: Any, packet: Any, note: str) -> None:
        if SSHLogger._debug_level >= _PACKET_DEBUG_LEVEL:  # noqa: SLF001 - asyncssh's switch
            original(self, msg, pkttype, pktid, packet, note)

    _log_packet.__wrapped__ = original  # type: ignore[attr-defined]
    return _log_packet


def _wrap_send_packet(original: Any) -> Any:
    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        enc = self._send_encryption
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE and isinstance(enc, _AEAD):
            return
        if (
            type(enc) is not GCMEncryption
            or pkttype <= MSG_USERAUTH_LAST
            or not self._kex_complete
            or not self._auth_complete
            or self._compressor is not None
            or self._rekey_bytes_sent >= self._rekey_bytes
            or (self._rekey_seconds and time.monotonic() >= self._rekey_time)
        ):
            original(self, pkttype, *args, handler=handler)
            return
        # asyncssh's framing for this state, built in one buffer and sealed into the wire
        # buffer: same lengths and padding rule, random padding, same header as AAD.
        size = 1 + sum(map(len, args))
        padlen = -(self._send_enchdrlen + size) % self._send_blocksize
        if padlen < 4:
            padlen += self._send_blocksize
        pktlen = 1 + size + padlen
        plain = bytearray(pktlen)
        plain[0] = padlen
        plain[1] = pkttype
        pos = 2
        for arg in args:
            plain[pos : pos + len(arg)] = arg
            pos += len(arg)
        plain[pos:] = _padding(padlen)
        wire = bytearray(4 + pktlen + _GCM_TAG_BYTES)
        header = pktlen.to_bytes(4, "big")
        wire[:4] = header
        cipher = enc._cipher  # noqa: SLF001
        _aead(cipher).encrypt_into(cipher._iv, plain, header, memoryview(wire)[4:])  # noqa: SLF001
        cipher._update_iv()  # noqa: SLF001
        seq = self._send_seq
        self._send(wire)
        self._send_seq = (seq + 1) & 0xFFFFFFFF
        self._rekey_bytes_sent += pktlen
        if SSHLogger._debug_level >= _PACKET_DEBUG_LEVEL:  # noqa: SLF001
            (handler or self).log_sent_packet(pkttype, seq, b"".join((bytes((pkttype,)), *args)))

    send_packet.__wrapped__ = original  # type: ignore[attr-defined]
    return send_packet


def _set_keepalive_timer(self: Any) -> None:
    """``SSHConnection._set_keepalive_timer``, firing ``_keepalive_due`` instead."""
    if self._keepalive_interval:
        self._keepalive_timer = self._loop.call_later(
            self._keepalive_interval, _keepalive_due, self
        )


def _reset_keepalive_timer(self: Any) -> None:
    """``SSHConnection._reset_keepalive_timer`` without a new timer per read: note the
    time; the running timer checks it when it fires."""
    if self._auth_complete:
        self._conduit_rx_at = self._loop.time()
        if not self._keepalive_timer:
            self._set_keepalive_timer()


def _keepalive_due(self: Any) -> None:
    """A keepalive is due ``keepalive_interval`` after the last data received, as in
    asyncssh; if data came meanwhile, wait out the rest of the interval."""
    if self._keepalive_timer is None:
        return  # cancelled (connection closing)
    remaining = self._conduit_rx_at + self._keepalive_interval - self._loop.time()
    if remaining > 0:
        self._keepalive_timer = self._loop.call_later(remaining, _keepalive_due, self)
    else:
        self._keepalive_timer_callback()


_pad_pool = bytearray()


def _padding(n: int) -> bytes:
    """``n`` random padding bytes, drawn from a pool refilled by ``os.urandom`` (one call
    per ~4 KiB instead of one per packet; the padding is encrypted and authenticated).
    Always exactly ``n`` bytes, even if event loops in two threads share the pool (they may
    then draw the same bytes, which encryption makes harmless)."""
    global _pad_pool  # noqa: PLW0603 - a process-wide pool
    chunk = bytes(_pad_pool[-n:])
    if len(chunk) != n:
        _pad_pool = bytearray(os.urandom(4096))
        chunk = bytes(_pad_pool[-n:])
    del _pad_pool[-n:]
    return chunk


def _wrap_recv_pkthdr(original: Any) -> Any:
    def _recv_pkthdr(self: Any) -> bool:
        enc = self._recv_encryption
        if (
            type(enc) is not GCMEncryption
            or self._decompressor is not None
            or self._kex is not None
            or not self._auth_complete
        ):
            return bool(original(self))
        buf: bytes = self._inpbuf
        cipher = enc._cipher  # noqa: SLF001
        aead = _aead(cipher)
        view = memoryview(buf)
        end, off = len(buf), 0
        logging_on = SSHLogger._debug_level >= _PACKET_DEBUG_LEVEL  # noqa: SLF001
        debug2 = SSHLogger._debug_level >= 2  # noqa: SLF001
        leave = False  # the next packet is asyncssh's to handle
        while end - off >= 4 + _GCM_BLOCK + _GCM_TAG_BYTES:
            pktlen = int.from_bytes(view[off : off + 4], "big")
            total = 4 + pktlen + _GCM_TAG_BYTES
            if pktlen > self._max_recv_pktlen or pktlen % _GCM_BLOCK:
                leave = True
                break
            if end - off < total:
                break
            try:
                plain = aead.decrypt(cipher._iv, view[off + 4 : off + total], view[off : off + 4])  # noqa: SLF001
            except InvalidTag:
                leave = True
                break
            padlen = plain[0]
            stop = len(plain) - padlen
            pkttype = plain[1] if stop >= 2 else -1
            handler: Any = self
            if pkttype not in _FAST_RECV:
                leave = True
                break
            if pkttype != MSG_IGNORE:
                channel = int.from_bytes(plain[2:6], "big") if stop >= 6 else -1
                handler = self._channels.get(channel)
                if handler is None:
                    leave = True
                    break
            inline = not logging_on and pkttype in (MSG_CHANNEL_DATA, MSG_IGNORE)
            if inline and pkttype == MSG_CHANNEL_DATA:
                # asyncssh's SSHChannel._process_data, inline; any case it would refuse
                # (channel not open, bad length, window exceeded) is left to it.
                size = int.from_bytes(plain[6:10], "big") if stop >= 10 else -1
                if (
                    size + 10 != stop
                    or handler._recv_state != "open"  # noqa: SLF001
                    or size > handler._recv_window  # noqa: SLF001
                ):
                    leave = True
                    break
            elif inline:  # asyncssh's _process_ignore: a well-formed string, discarded
                inline = stop >= 6 and int.from_bytes(plain[2:6], "big") + 6 == stop
            # This packet is ours: consume it, as _recv_pkthdr + _recv_packet would have.
            cipher._update_iv()  # noqa: SLF001
            off += total
            seq = self._recv_seq
            try:
                if inline and pkttype == MSG_CHANNEL_DATA:
                    if debug2:
                        handler.logger.debug2("Received %d data byte%s", size, "s" * (size > 1))
                    handler._accept_data(plain[10:stop])  # noqa: SLF001
                elif not inline:
                    packet = SSHPacket(plain[1:stop])
                    packet.get_byte()
                    if handler is not self:
                        packet.get_uint32()
                    if logging_on:
                        handler.log_received_packet(pkttype, seq, packet, "")
                    handler.process_packet(pkttype, seq, packet)
            except PacketDecodeError as exc:
                self._inpbuf = buf[off:]
                raise ProtocolError(str(exc)) from None
            except BaseException:
                if self._inpbuf is buf:
                    self._inpbuf = buf[off:]
                raise
            self._finish_recv_packet(pkttype, seq)
            if self._inpbuf is not buf or not self._transport:
                break  # closed by a handler: the buffer was reset or is of no use now
        del view  # plain bytes: a view on them pins nothing
        if self._inpbuf is buf:
            self._inpbuf = buf[off:] if off else buf
            if leave:
                return bool(original(self))
        return False

    _recv_pkthdr.__wrapped__ = original  # type: ignore[attr-defined]
    return _recv_pkthdr


def _aead(cipher: Any) -> AESGCM:
    aead: AESGCM | None = cipher.__dict__.get("_conduit_aead")
    if aead is None:
        aead = cipher._conduit_aead = AESGCM(cipher._key)  # noqa: SLF001
    return aead


def _encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
    sealed = _aead(self).encrypt(self._iv, data, header)
    self._update_iv()
    return header + sealed[:-_GCM_TAG_BYTES], sealed[-_GCM_TAG_BYTES:]


def _verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
    try:
        plain: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
    except InvalidTag:
        plain = None
    self._update_iv()
    return plain


def _init_assigns(cls: type) -> set[str]:
    """Names ``cls.__init__`` assigns on ``self`` (empty if its source is unavailable)."""
    try:
        source = inspect.getsource(cls.__init__)  # type: ignore[misc]
    except (OSError, TypeError):
        return set()
    return set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=", source))


def install() -> bool:
    """Apply the changes once per process; False (logged) on another asyncssh version or
    if asyncssh changed."""
    global _installed, _version_refused  # noqa: PLW0603 - process-wide, guarded here
    if _installed:
        return True
    if asyncssh.__version__ != VERIFIED_ASYNCSSH:
        if not _version_refused:
            _version_refused = True
            log.warning("asyncssh %s: relay fast path not installed (verified against %s "
                        "only); using plain asyncssh", asyncssh.__version__,
                        VERIFIED_ASYNCSSH)  # fmt: skip
        return False
    gcm = getattr(_cipher, "GCMCipher", None)
    missing = [name for name in _CONNECTION_INTERNALS if not hasattr(SSHConnection, name)]
    missing += [name for name in _CONNECTION_STATE if name not in _init_assigns(SSHConnection)]
    missing += [name for name in _GCM_INTERNALS if gcm is None or not hasattr(gcm, name)]
    if not hasattr(SSHPacketLogger, "_log_packet") or not hasattr(SSHLogger, "_debug_level"):
        missing.append("SSHPacketLogger._log_packet")
    if missing:
        log.error("asyncssh %s: relay fast path not installed (missing %s)",
                  asyncssh.__version__, ", ".join(missing))  # fmt: skip
        return False
    SSHConnection._conduit_pending = None  # type: ignore[attr-defined]
    SSHConnection._send = _send  # type: ignore[method-assign]
    SSHConnection.send_packet = _wrap_send_packet(SSHConnection.send_packet)  # type: ignore[method-assign]
    if _QUICKACK is not None:
        SSHConnection._conduit_sock = None  # type: ignore[attr-defined]
        SSHConnection._conduit_quickacks = QUICKACK_READS  # type: ignore[attr-defined]
        SSHConnection.data_received = _wrap_data_received(SSHConnection.data_received)  # type: ignore[method-assign]
    SSHPacketLogger._log_packet = _wrap_log_packet(SSHPacketLogger._log_packet)  # type: ignore[method-assign]
    SSHConnection._recv_pkthdr = _wrap_recv_pkthdr(SSHConnection._recv_pkthdr)  # type: ignore[method-assign]
    SSHConnection._conduit_rx_at = 0.0  # type: ignore[attr-defined]
    SSHConnection._set_keepalive_timer = _set_keepalive_timer  # type: ignore[method-assign]
    SSHConnection._reset_keepalive_timer = _reset_keepalive_timer  # type: ignore[method-assign]
    gcm.encrypt_and_sign = _encrypt_and_sign  # type: ignore[union-attr]
    gcm.verify_and_decrypt = _verify_and_decrypt  # type: ignore[union-attr]
    _installed = True
    return True


def installed() -> bool:
    return _installed
