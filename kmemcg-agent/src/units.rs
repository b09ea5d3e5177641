//! Sizes for people: IEC units (KiB, MiB, ...).
use humansize::{BINARY, format_size};

/// `1.5 MiB`, `512 B`.
pub fn iec(bytes: u64) -> String {
    format_size(bytes, BINARY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iec() {
        assert_eq!(iec(512), "512 B");
        assert_eq!(iec(1536), "1.50 KiB");
        assert_eq!(iec(3 << 20), "3 MiB");
    }
}
