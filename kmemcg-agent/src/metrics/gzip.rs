//! Gzip for `/metrics` without compressing the big part per scrape: the snapshot's text is
//! compressed once (a deflate stream left open at a full flush, where nothing after it refers
//! back into it), and each scrape appends only its own small part, compressed on its own, and
//! the gzip trailer. The result is one ordinary gzip member.
use axum::body::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

/// Gzip header: deflate, no flags, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The compressed beginning of a gzip member, shared by every scrape of one snapshot.
#[derive(Clone, Debug)]
pub struct GzipPrefix {
    /// Header and the deflate blocks of the text, ending at a full flush.
    pub bytes: Bytes,
    crc: u32,
    len: u64,
}

impl GzipPrefix {
    pub fn new(text: &[u8]) -> Self {
        let mut out = Vec::with_capacity(text.len() / 6 + 1024);
        out.extend_from_slice(&HEADER);
        deflate(text, &mut out, FlushCompress::Full);
        let mut crc = crc32fast::Hasher::new();
        crc.update(text);
        Self {
            bytes: out.into(),
            crc: crc.finalize(),
            len: text.len() as u64,
        }
    }

    /// The rest of the member after [`Self::bytes`]: `tail` compressed, and the trailer.
    pub fn finish(&self, tail: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(tail.len() / 4 + 64);
        deflate(tail, &mut out, FlushCompress::Finish);
        let mut crc = crc32fast::Hasher::new_with_initial(self.crc);
        crc.update(tail);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE: the length modulo 2^32.
        out.extend_from_slice(&((self.len + tail.len() as u64) as u32).to_le_bytes());
        out.into()
    }
}

/// Raw deflate of `input` appended to `out`, up to a full flush or to the stream's end.
fn deflate(input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    // Fast: the text is compressed at most once per sample, and it still shrinks about
    // eightfold.
    let mut c = Compress::new(Compression::fast(), false);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], out, flush)
            .expect("deflate of an in-memory buffer");
        let done = c.total_in() as usize == input.len() && out.len() < out.capacity();
        if status == Status::StreamEnd || (done && !matches!(flush, FlushCompress::Finish)) {
            return;
        }
        out.reserve(out.capacity().max(4096));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn gunzip(member: &[u8]) -> Vec<u8> {
        let mut text = Vec::new();
        // A single-member decoder: the spliced stream must be one ordinary member.
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut text)
            .expect("valid gzip");
        text
    }

    #[test]
    fn a_shared_prefix_and_a_scrapes_tail_make_one_gzip_member() {
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| {
                format!("kmemcg_cgroup_slab_bytes{{cgroup=\"/c{i}\"}} {}\n", i * 64).into_bytes()
            })
            .collect();
        let prefix = GzipPrefix::new(&text);
        assert!(prefix.bytes.len() < text.len() / 4);
        for tail in [&b""[..], b"process_open_fds 12\n", &text[..5000]] {
            let mut member = prefix.bytes.to_vec();
            member.extend_from_slice(&prefix.finish(tail));
            let mut expected = text.clone();
            expected.extend_from_slice(tail);
            assert_eq!(gunzip(&member), expected);
        }
        let empty = GzipPrefix::new(b"");
        let mut member = empty.bytes.to_vec();
        member.extend_from_slice(&empty.finish(b"x 1\n"));
        assert_eq!(gunzip(&member), b"x 1\n");
    }
}
