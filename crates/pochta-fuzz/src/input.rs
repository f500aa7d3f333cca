//! Fuzz input taken apart: a few bytes decide choices, the rest is data.

/// Arbitrary bytes read from the front; once they run out, every read gives zeros or nothing.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of `n` choices (n > 0).
    pub fn choose(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A piece whose length the input chooses (1 to `max` bytes).
    pub fn piece(&mut self, max: usize) -> &'a [u8] {
        let n = self.choose(max) + 1;
        self.bytes(n)
    }

    /// A short text: a length byte, then that many bytes as (lossy) UTF-8.
    pub fn text(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
