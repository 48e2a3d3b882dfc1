//! The output queue of a [`Chat`](super::Chat): byte chunks and lazy producers.

use std::collections::VecDeque;

/// A lazy source of output (asynchat's producer, `push_with_producer`): asked for more only when
/// the queue before it has been written, so a large reply never sits in memory whole.
pub trait Producer {
    /// The next piece of output, or `None` when exhausted (Python's `b''`).
    fn more(&mut self) -> Option<Vec<u8>>;
}

impl<I: Iterator<Item = Vec<u8>>> Producer for I {
    fn more(&mut self) -> Option<Vec<u8>> {
        self.next()
    }
}

enum Chunk {
    Bytes { data: Vec<u8>, pos: usize },
    Producer(Box<dyn Producer>),
}

/// Small pushes are appended to the last chunk up to this size, so pipelined replies leave in
/// one `write`.
const COALESCE: usize = 16 * 1024;

#[derive(Default)]
pub(crate) struct OutBuf {
    chunks: VecDeque<Chunk>,
    /// Bytes queued in byte chunks (producers not counted until they produce).
    len: usize,
}

impl OutBuf {
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Bytes { data: last, pos }) = self.chunks.back_mut() {
            if last.len() - *pos + data.len() <= COALESCE {
                last.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Bytes {
            data: data.to_vec(),
            pos: 0,
        });
    }

    pub(crate) fn push_vec(&mut self, data: Vec<u8>) {
        if data.len() <= COALESCE {
            return self.push(&data);
        }
        self.len += data.len();
        self.chunks.push_back(Chunk::Bytes { data, pos: 0 });
    }

    pub(crate) fn push_producer(&mut self, producer: Box<dyn Producer>) {
        self.chunks.push_back(Chunk::Producer(producer));
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The bytes to write next, running producers as needed; `None` when everything is out.
    pub(crate) fn front(&mut self) -> Option<&[u8]> {
        loop {
            match self.chunks.front_mut()? {
                Chunk::Bytes { data, pos } if *pos < data.len() => break,
                Chunk::Bytes { .. } => {
                    self.chunks.pop_front();
                }
                Chunk::Producer(p) => match p.more() {
                    Some(data) if !data.is_empty() => {
                        self.len += data.len();
                        self.chunks.push_front(Chunk::Bytes { data, pos: 0 });
                    }
                    Some(_) => {}
                    None => {
                        self.chunks.pop_front();
                    }
                },
            }
        }
        match self.chunks.front() {
            Some(Chunk::Bytes { data, pos }) => Some(&data[*pos..]),
            _ => None,
        }
    }

    /// Marks `n` bytes of [`front`](Self::front) as written.
    pub(crate) fn advance(&mut self, n: usize) {
        if let Some(Chunk::Bytes { data, pos }) = self.chunks.front_mut() {
            *pos += n;
            self.len -= n;
            if *pos == data.len() {
                self.chunks.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut OutBuf, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(front) = out.front() {
            let n = front.len().min(step);
            got.extend_from_slice(&front[..n]);
            out.advance(n);
        }
        got
    }

    #[test]
    fn pushes_and_producers_come_out_in_order() {
        let mut out = OutBuf::default();
        out.push(b"220 hi\r\n");
        out.push_producer(Box::new(
            vec![b"a".to_vec(), Vec::new(), b"bc".to_vec()].into_iter(),
        ));
        out.push(b"tail");
        assert_eq!(drain(&mut out, 3), b"220 hi\r\nabctail");
        assert!(out.is_empty());
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn small_pushes_coalesce_into_one_chunk() {
        let mut out = OutBuf::default();
        for _ in 0..100 {
            out.push(b"250 OK\r\n");
        }
        assert_eq!(out.front().map(|f| f.len()), Some(800));
        assert_eq!(out.len(), 800);
    }
}
