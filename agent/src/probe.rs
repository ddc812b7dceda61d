//! Which platforms this host can execute, found by running a probe, not by trusting file names.
//!
//! For each architecture kiln knows a probe for, a tiny static ELF executable that only calls
//! `exit(42)` is written and executed. The host's own architecture (and 32-bit i386 on amd64)
//! counts as native; anything else that runs did so through binfmt_misc (qemu-user-static).

use kiln_shared::Platform;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the probe files of this process (several probes may run at once in one process).
static PROBES: AtomicU64 = AtomicU64::new(0);

/// A minimal 64-bit little-endian ELF executable: one PT_LOAD segment holding `code`.
/// `flags` is `e_flags` (ppc64le needs 2, the ELFv2 ABI: under ELFv1 the entry point would be
/// read as a function descriptor, and the probe would crash instead of exiting).
fn elf64(machine: u16, flags: u32, code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x400000;
    let entry = BASE + 64 + 56;
    let total = (64 + 56 + code.len()) as u64;
    let mut v = Vec::new();
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&machine.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&entry.to_le_bytes());
    v.extend_from_slice(&64u64.to_le_bytes()); // phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // shoff
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    v.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    v.extend_from_slice(&1u16.to_le_bytes()); // phnum
    v.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    v.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    v.extend_from_slice(&5u32.to_le_bytes()); // R+X
    v.extend_from_slice(&0u64.to_le_bytes()); // offset
    v.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    v.extend_from_slice(&BASE.to_le_bytes()); // paddr
    v.extend_from_slice(&total.to_le_bytes()); // filesz
    v.extend_from_slice(&total.to_le_bytes()); // memsz
    v.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    v.extend_from_slice(code);
    v
}

/// A minimal 32-bit little-endian ELF executable (ARM EABI5): one PT_LOAD segment holding `code`.
fn elf32_arm(code: &[u8]) -> Vec<u8> {
    const BASE: u32 = 0x10000;
    let entry = BASE + 52 + 32;
    let total = (52 + 32 + code.len()) as u32;
    let mut v = Vec::new();
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&40u16.to_le_bytes()); // EM_ARM
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&entry.to_le_bytes());
    v.extend_from_slice(&52u32.to_le_bytes()); // phoff
    v.extend_from_slice(&0u32.to_le_bytes()); // shoff
    v.extend_from_slice(&0x0500_0000u32.to_le_bytes()); // EABI version 5
    v.extend_from_slice(&52u16.to_le_bytes()); // ehsize
    v.extend_from_slice(&32u16.to_le_bytes()); // phentsize
    v.extend_from_slice(&1u16.to_le_bytes()); // phnum
    v.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    v.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    v.extend_from_slice(&0u32.to_le_bytes()); // offset
    v.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    v.extend_from_slice(&BASE.to_le_bytes()); // paddr
    v.extend_from_slice(&total.to_le_bytes()); // filesz
    v.extend_from_slice(&total.to_le_bytes()); // memsz
    v.extend_from_slice(&5u32.to_le_bytes()); // R+X
    v.extend_from_slice(&0x1000u32.to_le_bytes()); // align
    v.extend_from_slice(code);
    v
}

/// `exit(42)` for each architecture with a probe. `arm` (32-bit) is not among the platforms
/// an agent offers; its probe only tells [`crate::binfmt`] whether an arm64 host runs AArch32
/// code itself.
fn probe_binary(arch: &str) -> Option<Vec<u8>> {
    Some(match arch {
        // mov edi, 42; mov eax, 60; syscall
        "amd64" => elf64(62, 0, &[0xbf, 42, 0, 0, 0, 0xb8, 60, 0, 0, 0, 0x0f, 0x05]),
        // mov x0, #42; mov x8, #93; svc #0
        "arm64" => elf64(183, 0, &[0x40, 0x05, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4]),
        // li r3, 42; li r0, 1 (exit); sc
        "ppc64le" => elf64(21, 2, &[0x2a, 0x00, 0x60, 0x38, 0x01, 0x00, 0x00, 0x38, 0x02, 0x00, 0x00, 0x44]),
        // li a0, 42; li a7, 93; ecall
        "riscv64" => elf64(243, 0, &[0x13, 0x05, 0xa0, 0x02, 0x93, 0x08, 0xd0, 0x05, 0x73, 0x00, 0x00, 0x00]),
        // mov r0, #42; mov r7, #1 (exit); svc #0
        "arm" => elf32_arm(&[0x2a, 0x00, 0xa0, 0xe3, 0x01, 0x70, 0xa0, 0xe3, 0x00, 0x00, 0x00, 0xef]),
        _ => return None,
    })
}

/// What this host can run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HostPlatforms {
    pub native: Vec<Platform>,
    pub emulated: Vec<Platform>,
}

impl HostPlatforms {
    /// Probes every architecture with a probe binary, writing them under `scratch`. The probes
    /// run at once, and their names are this process's own: several agents or `kiln` processes
    /// may probe in one directory at the same time.
    pub fn detect(scratch: &Path) -> HostPlatforms {
        let host = Platform::host();
        let mut out = HostPlatforms { native: vec![host.clone()], emulated: vec![] };
        let _ = std::fs::create_dir_all(scratch);
        let mut running = Vec::new();
        for arch in ["amd64", "arm64", "riscv64", "ppc64le"] {
            if arch == host.arch() {
                continue;
            }
            let Some(bin) = probe_binary(arch) else { continue };
            let path = scratch.join(format!("probe-{arch}-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed)));
            if write_executable(&path, &bin).is_err() {
                continue;
            }
            let child = Command::new(&path).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn();
            running.push((arch, path, child));
        }
        for (arch, path, child) in running {
            let mut ran = child.and_then(|mut c| c.wait()).map(|s| s.code() == Some(42)).unwrap_or(false);
            if !ran {
                // Once more, alone: a spawn can fail with ETXTBSY when another thread of this
                // process forked while a probe was being written, and a loaded host can lose one.
                std::thread::sleep(std::time::Duration::from_millis(50));
                ran = Command::new(&path)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.code() == Some(42));
            }
            let _ = std::fs::remove_file(&path);
            if ran {
                if let Ok(p) = Platform::new("linux", arch, None) {
                    out.emulated.push(p);
                }
            }
        }
        out
    }

    pub fn can_run(&self, p: &Platform) -> bool {
        self.native.iter().chain(&self.emulated).any(|h| h.os() == p.os() && h.arch() == p.arch())
    }

    pub fn is_emulated(&self, p: &Platform) -> bool {
        !self.native.iter().any(|h| h.arch() == p.arch())
    }
}

/// Whether this host runs `arch` code now (natively or through a registered handler), found by
/// running its probe under `scratch`; false for an architecture without a probe.
pub fn runs(arch: &str, scratch: &Path) -> bool {
    let Some(bin) = probe_binary(arch) else { return false };
    let _ = std::fs::create_dir_all(scratch);
    let path = scratch.join(format!("probe-{arch}-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed)));
    if write_executable(&path, &bin).is_err() {
        return false;
    }
    let ran = Command::new(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.code() == Some(42))
        .unwrap_or(false);
    let _ = std::fs::remove_file(&path);
    ran
}

fn write_executable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_probe_runs() {
        let dir = std::env::temp_dir().join(format!("kiln-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = Platform::host();
        if let Some(bin) = probe_binary(host.arch()) {
            let path = dir.join("native");
            write_executable(&path, &bin).unwrap();
            assert_eq!(Command::new(&path).status().unwrap().code(), Some(42));
        }
        let found = HostPlatforms::detect(&dir);
        assert!(found.can_run(&host));
        assert!(!found.is_emulated(&host));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The 32-bit arm and the ppc64le probes are valid programs: where qemu-arm and
    /// qemu-ppc64le are registered they exit 42; an arch without a probe never "runs".
    #[test]
    fn foreign_probes_run_where_qemu_is_registered() {
        let dir = std::env::temp_dir().join(format!("kiln-probe-arm-{}", std::process::id()));
        if Path::new("/proc/sys/fs/binfmt_misc/qemu-arm").exists() {
            assert!(runs("arm", &dir));
        }
        if Path::new("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists() {
            assert!(runs("ppc64le", &dir), "the ppc64le probe (ELFv2) runs under qemu-ppc64le");
        }
        assert!(!runs("mips", &dir));
        let _ = std::fs::remove_dir_all(dir);
    }
}
