//! Integers of every width: their types' ranges, their values, and the varints postcard writes.

/// What postcard and JSON need to know of an integer type.
#[derive(Debug, Clone, Copy)]
pub(super) struct IntShape {
    pub(super) name: &'static str,
    pub(super) bits: u32,
    pub(super) signed: bool,
}

impl IntShape {
    pub(super) const I8: Self = Self { name: "i8", bits: 8, signed: true };
    pub(super) const I16: Self = Self { name: "i16", bits: 16, signed: true };
    pub(super) const I32: Self = Self { name: "i32", bits: 32, signed: true };
    pub(super) const I64: Self = Self { name: "i64", bits: 64, signed: true };
    pub(super) const I128: Self = Self { name: "i128", bits: 128, signed: true };
    pub(super) const U8: Self = Self { name: "u8", bits: 8, signed: false };
    pub(super) const U16: Self = Self { name: "u16", bits: 16, signed: false };
    pub(super) const U32: Self = Self { name: "u32", bits: 32, signed: false };
    pub(super) const U64: Self = Self { name: "u64", bits: 64, signed: false };
    pub(super) const U128: Self = Self { name: "u128", bits: 128, signed: false };

    pub(super) fn min(self) -> i128 {
        if self.signed {
            i128::MIN >> (128 - self.bits)
        } else {
            0
        }
    }

    /// The largest value, capped at `i128::MAX` (JSON numbers stop at `u64::MAX` anyway).
    pub(super) fn max(self) -> i128 {
        match (self.signed, self.bits) {
            (true, bits) => i128::MAX >> (128 - bits),
            (false, bits) if bits < 127 => (1 << bits) - 1,
            (false, _) => i128::MAX,
        }
    }
}

/// An integer of any width and signedness.
#[derive(Debug, Clone, Copy)]
pub(super) enum IntValue {
    Signed(i128),
    Unsigned(u128),
}

impl std::fmt::Display for IntValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signed(signed) => signed.fmt(f),
            Self::Unsigned(unsigned) => unsigned.fmt(f),
        }
    }
}

pub(super) fn write_integer(out: &mut Vec<u8>, value: IntValue, int: IntShape) {
    match (value, int.bits) {
        // Both are in range for `int`: the low byte is the value (two's complement for i8).
        (IntValue::Signed(signed), 8) => out.push(signed as u8),
        (IntValue::Unsigned(unsigned), 8) => out.push(unsigned as u8),
        (IntValue::Signed(signed), _) => {
            write_varint(out, ((signed << 1) ^ (signed >> 127)) as u128)
        }
        (IntValue::Unsigned(unsigned), _) => write_varint(out, unsigned),
    }
}

pub(super) fn write_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
