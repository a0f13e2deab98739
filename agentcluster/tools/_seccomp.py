"""A seccomp filter for python_exec's sandbox: system calls untrusted code never needs, refused.

Namespaces and dropped capabilities already make most dangerous calls fail; this filter removes
the kernel surface that stays reachable to an unprivileged process and that kernel exploits
favour: keyrings, BPF, perf events, userfaultfd, io_uring, ptrace and cross-process memory access,
module and kexec loading, the mount API, new namespaces, handle-based opens, ``personality``.
Refused calls fail with EPERM; calls of any other ABI (32-bit ``int 0x80``, x32) are refused
whole, since their numbers differ.

The program is classic BPF as ``bwrap --seccomp FD`` expects it (an array of ``sock_filter``),
built here for x86-64 only: :func:`seccomp_program` returns None on other machines and the
sandbox then runs without this filter (its status says so).
"""

from __future__ import annotations

import platform
import struct

__all__ = ["DENIED_SYSCALLS", "seccomp_program"]

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_SYSCALLS: dict[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "personality": 135,
    "pivot_root": 155,
    "chroot": 161,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_EPERM = 1
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
# Classic BPF opcodes.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
# struct seccomp_data: int nr; __u32 arch; ...
_OFFSET_NR = 0
_OFFSET_ARCH = 4


def seccomp_program() -> bytes | None:
    """The filter as bytes for ``bwrap --seccomp``, or None where it is not built (not x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    numbers = sorted(set(DENIED_SYSCALLS.values()))
    # Layout: 0 load arch, 1 arch check, 2 load nr, 3 x32 check, 4.. one check per number,
    # then ALLOW, then DENY. Jump offsets count instructions after the jump.
    deny_at = 4 + len(numbers) + 1
    program = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 0, deny_at - 2, _AUDIT_ARCH_X86_64),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
        (_JGE_K, deny_at - 4, 0, _X32_SYSCALL_BIT),
    ]
    for index, number in enumerate(numbers):
        position = 4 + index
        program.append((_JEQ_K, deny_at - position - 1, 0, number))
    program.append((_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    program.append((_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
