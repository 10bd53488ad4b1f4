//! Pooled byte buffers for the HTTP/1.1 engine: an idle connection holds none, a busy one
//! takes a 16 KiB buffer from its thread's pool and gives it back when it goes idle.

use std::cell::RefCell;

/// Size of a pooled buffer: a whole typical head plus the start of its body in one read.
pub(crate) const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread for reuse; past that they go back to the allocator.
const KEEP_PER_THREAD: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_vec() -> Vec<u8> {
    FREE.try_with(|f| f.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

fn give_vec(mut v: Vec<u8>) {
    // Only standard-size buffers are kept: one grown for a huge head goes back to malloc.
    if v.capacity() != BUF_SIZE {
        return;
    }
    v.clear();
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP_PER_THREAD {
            f.push(v);
        }
    });
}

/// A byte buffer with a read cursor. Holds no memory while empty and released, which is
/// what an idle keep-alive connection does: its buffer goes back to the thread's pool.
pub(crate) struct Buf {
    /// Filled bytes are `data[start..]`; spare capacity is where reads land.
    pub(crate) data: Vec<u8>,
    start: usize,
}

impl Buf {
    pub(crate) const fn new() -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Give the memory back to the pool if nothing is buffered.
    pub(crate) fn release(&mut self) {
        if self.is_empty() && self.data.capacity() > 0 {
            give_vec(std::mem::take(&mut self.data));
            self.start = 0;
        }
    }

    /// Make room for a read: take a pooled buffer, move unread bytes to the front, or grow
    /// up to `max` bytes. False when the buffer already holds `max` bytes.
    pub(crate) fn reserve(&mut self, max: usize) -> bool {
        if self.data.capacity() == 0 {
            self.data = take_vec();
            self.start = 0;
        }
        if self.data.len() < self.data.capacity() {
            return true;
        }
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
            return true;
        }
        if self.data.len() >= max {
            return false;
        }
        let want = (self.data.capacity() * 2).min(max.max(BUF_SIZE));
        self.data.reserve_exact(want - self.data.len());
        true
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.data.capacity() > 0 {
            give_vec(std::mem::take(&mut self.data));
        }
    }
}

/// An output buffer from the same pool, taken at its first write.
pub(crate) struct Out(pub(crate) Vec<u8>);

impl Out {
    pub(crate) const fn new() -> Out {
        Out(Vec::new())
    }

    /// The buffer to write to.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        if self.0.capacity() == 0 {
            self.0 = take_vec();
        }
        &mut self.0
    }

    /// Keep what was written in an allocation of its size, the pooled buffer going back to
    /// the pool: for bytes held across a long wait.
    pub(crate) fn shrink(&mut self) {
        if self.0.capacity() == BUF_SIZE {
            let exact = self.0.as_slice().to_vec();
            give_vec(std::mem::replace(&mut self.0, exact));
        }
    }

    /// Give the memory back while there is nothing to send (a stream between events).
    pub(crate) fn release(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            give_vec(std::mem::take(&mut self.0));
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        give_vec(std::mem::take(&mut self.0));
    }
}

/// How a message body is delimited on the wire.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `b` starts an HTTP/2 prior-knowledge connection: `Some(true)` it does,
/// `Some(false)` it does not, `None` too few bytes to tell.
pub(crate) fn h2_preface(b: &[u8]) -> Option<bool> {
    let n = b.len().min(PREFACE.len());
    if b[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}
/// `n` in decimal, without allocating.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shrunk_output_keeps_its_bytes_in_an_allocation_of_their_size() {
        let mut o = Out::new();
        o.vec()
            .extend_from_slice(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n{}");
        assert_eq!(o.0.capacity(), BUF_SIZE);
        o.shrink();
        assert_eq!(&o.0[..], b"POST /v1/chat/completions HTTP/1.1\r\n\r\n{}");
        assert!(o.0.capacity() < 64, "{}", o.0.capacity());
        o.shrink();
        assert_eq!(o.0.len(), 40, "shrinking again changes nothing");
    }

    #[test]
    fn idle_buffers_hold_no_memory_and_grow_only_to_the_limit() {
        let mut b = Buf::new();
        assert_eq!(b.data.capacity(), 0);
        assert!(b.reserve(64 * 1024));
        assert_eq!(b.data.capacity(), BUF_SIZE);
        b.data.extend_from_slice(b"abc");
        b.consume(1);
        assert_eq!(b.bytes(), b"bc");
        b.consume(2);
        b.release();
        assert_eq!(b.data.capacity(), 0, "released when empty");
        assert!(b.reserve(BUF_SIZE));
        b.data.resize(BUF_SIZE, 7);
        assert!(!b.reserve(BUF_SIZE), "full at the limit");
        assert!(b.reserve(2 * BUF_SIZE), "grows up to a larger limit");
        assert!(b.data.capacity() >= 2 * BUF_SIZE);
        assert_eq!(h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(true));
        assert_eq!(h2_preface(b"PRI * HT"), None);
        assert_eq!(h2_preface(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
    }
}
