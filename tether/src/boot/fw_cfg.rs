//! QEMU's fw_cfg device, read directly through its x86 I/O ports.
//!
//! Owns the fw_cfg protocol: the signature check, the file directory and
//! reading one file. Reading the ports directly needs no kernel module and
//! no ACPI (a microVM may have neither), and leaves nothing in `/sys` for
//! the container to read the tether's keys from. Must not interpret the
//! bytes it returns.

use std::io;

const SELECT_SIGNATURE: u16 = 0x0000;
const SELECT_FILE_DIR: u16 = 0x0019;
const SIGNATURE: &[u8; 4] = b"QEMU";
/// Name field length in a directory entry.
const NAME_LEN: usize = 56;

/// The device's selector and data registers.
pub trait Port {
    fn select(&mut self, key: u16);
    fn read(&mut self, buf: &mut [u8]);
}

/// Reads the file called `name`. `Ok(None)`: the device is there but has no
/// such file. An error: no fw_cfg device.
pub fn read_file(port: &mut dyn Port, name: &str) -> io::Result<Option<Vec<u8>>> {
    port.select(SELECT_SIGNATURE);
    let mut sig = [0u8; 4];
    port.read(&mut sig);
    if &sig != SIGNATURE {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no QEMU fw_cfg device at I/O port 0x510",
        ));
    }
    port.select(SELECT_FILE_DIR);
    let mut count = [0u8; 4];
    port.read(&mut count);
    let count = u32::from_be_bytes(count);
    let mut found = None;
    // The directory must be read through to its end before selecting
    // another key; remember the match on the way.
    for _ in 0..count {
        let mut entry = [0u8; 8 + NAME_LEN];
        port.read(&mut entry);
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let select = u16::from_be_bytes([entry[4], entry[5]]);
        let raw = &entry[8..];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
        if &raw[..end] == name.as_bytes() && found.is_none() {
            found = Some((select, size));
        }
    }
    Ok(found.map(|(select, size)| {
        port.select(select);
        let mut data = vec![0u8; size as usize];
        port.read(&mut data);
        data
    }))
}

/// The real device on x86-64: selector at 0x510, data at 0x511.
#[cfg(target_arch = "x86_64")]
pub struct IoPorts(());

#[cfg(target_arch = "x86_64")]
impl IoPorts {
    const SELECTOR: u16 = 0x510;
    const DATA: u16 = 0x511;

    /// Asks the kernel for access to the two ports (needs CAP_SYS_RAWIO).
    pub fn open() -> io::Result<Self> {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        if unsafe { libc::ioperm(u64::from(Self::SELECTOR), 2, 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for IoPorts {
    fn drop(&mut self) {
        // SAFETY: as in `open`; giving the ports back.
        unsafe { libc::ioperm(u64::from(Self::SELECTOR), 2, 0) };
    }
}

#[cfg(target_arch = "x86_64")]
impl Port for IoPorts {
    fn select(&mut self, key: u16) {
        // SAFETY: `open` obtained permission for this port; writing the
        // selector register has no effect on memory.
        unsafe {
            std::arch::asm!("out dx, ax", in("dx") Self::SELECTOR, in("ax") key, options(nomem, nostack, preserves_flags));
        }
    }

    fn read(&mut self, buf: &mut [u8]) {
        for b in buf {
            let v: u8;
            // SAFETY: `open` obtained permission for this port; reading
            // the data register has no effect on memory.
            unsafe {
                std::arch::asm!("in al, dx", out("al") v, in("dx") Self::DATA, options(nomem, nostack, preserves_flags));
            }
            *b = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emulated device holding some files.
    struct Fake {
        items: std::collections::HashMap<u16, Vec<u8>>,
        cur: Vec<u8>,
        pos: usize,
    }

    impl Fake {
        fn new(signature: &[u8], files: &[(&str, &[u8])]) -> Self {
            let mut items = std::collections::HashMap::new();
            items.insert(SELECT_SIGNATURE, signature.to_vec());
            let mut dir = (files.len() as u32).to_be_bytes().to_vec();
            for (i, (name, data)) in files.iter().enumerate() {
                let select = 0x20 + i as u16;
                dir.extend((data.len() as u32).to_be_bytes());
                dir.extend(select.to_be_bytes());
                dir.extend([0, 0]);
                let mut n = name.as_bytes().to_vec();
                n.resize(NAME_LEN, 0);
                dir.extend(n);
                items.insert(select, data.to_vec());
            }
            items.insert(SELECT_FILE_DIR, dir);
            Self {
                items,
                cur: Vec::new(),
                pos: 0,
            }
        }
    }

    impl Port for Fake {
        fn select(&mut self, key: u16) {
            self.cur = self.items.get(&key).cloned().unwrap_or_default();
            self.pos = 0;
        }
        fn read(&mut self, buf: &mut [u8]) {
            for b in buf {
                // Reads past the end give 0, as the device does.
                *b = self.cur.get(self.pos).copied().unwrap_or(0);
                self.pos += 1;
            }
        }
    }

    #[test]
    fn reads_a_named_file() {
        let mut dev = Fake::new(
            b"QEMU",
            &[("etc/boot", b"x"), ("opt/org.tether/spec", b"spec-bytes")],
        );
        assert_eq!(
            read_file(&mut dev, "opt/org.tether/spec").unwrap().unwrap(),
            b"spec-bytes"
        );
        assert_eq!(read_file(&mut dev, "etc/boot").unwrap().unwrap(), b"x");
    }

    #[test]
    fn missing_file_is_none_and_missing_device_is_an_error() {
        let mut dev = Fake::new(b"QEMU", &[("etc/boot", b"x")]);
        assert!(
            read_file(&mut dev, "opt/org.tether/spec")
                .unwrap()
                .is_none()
        );
        // A prefix of a name is not the name.
        assert!(read_file(&mut dev, "etc/boo").unwrap().is_none());
        let mut none = Fake::new(b"\xff\xff\xff\xff", &[]);
        assert!(read_file(&mut none, "etc/boot").is_err());
    }
}
