//! Chunked transfer coding (RFC 9112 §7.1), read as it passes: where a chunked body ends, so the
//! relay can copy it through unchanged and know when the next response starts.

/// Where a chunked body ends, found while its bytes pass through unchanged (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions up to the line's end.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line after the last chunk: an empty one ends the body.
    Trailer,
    TrailerLine,
    TrailerLf,
    EndLf,
}

impl Chunks {
    /// Scans `bytes`, the next part of the body: `Some(n)` if the body ends after its first
    /// `n` bytes, `None` if it goes on past them; an error if it is not chunked encoding.
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())? as u64;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d))
                            .ok_or(())?;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(());
                    }
                }
                ChunkState::SizeLf => {
                    let next = if self.size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data
                    };
                    self.state = expect(b, b'\n', next)?;
                }
                ChunkState::Data => {
                    let take = (self.size.min((bytes.len() - i) as u64)) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => self.state = expect(b, b'\r', ChunkState::DataLf)?,
                ChunkState::DataLf => self.state = expect(b, b'\n', ChunkState::Size)?,
                ChunkState::Trailer => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => self.state = expect(b, b'\n', ChunkState::Trailer)?,
                ChunkState::EndLf => {
                    expect(b, b'\n', ChunkState::EndLf)?;
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }
}

/// `next` if `b` is the byte the encoding requires here.
fn expect(b: u8, want: u8, next: ChunkState) -> Result<ChunkState, ()> {
    if b == want { Ok(next) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a chunked body is found wherever the reads split it.
    #[test]
    fn the_end_of_a_chunked_body_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for split in 0..=body.len() {
            let mut c = Chunks::default();
            let first = c.scan(&with_next[..split]).expect("valid");
            let end = match first {
                Some(n) => n,
                None => split + c.scan(&with_next[split..]).expect("valid").expect("ends"),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        let mut c = Chunks::default();
        assert_eq!(c.scan(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(
                Chunks::default().scan(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
