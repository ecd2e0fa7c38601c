//! Page sizes of list calls.

/// Page size used when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger requests are served this many.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A page size in `1..=MAX_PAGE_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

/// A negative page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must not be negative")]
pub struct NegativePageSize;

impl PageSize {
    /// Interprets a request's `page_size`: 0 means the default, values above
    /// the maximum are clamped, negative values are refused.
    pub fn from_request(requested: i32) -> Result<Self, NegativePageSize> {
        match u32::try_from(requested) {
            Err(_) => Err(NegativePageSize),
            Ok(0) => Ok(Self(DEFAULT_PAGE_SIZE)),
            Ok(n) => Ok(Self(n.min(MAX_PAGE_SIZE))),
        }
    }

    /// The number of items.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The number of items as a row count.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// How many rows a page query fetches: one more than the page, to learn
    /// whether another page follows.
    pub fn fetch(self) -> u64 {
        u64::from(self.0) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_default_large_is_clamped_negative_is_refused() {
        assert_eq!(PageSize::from_request(0).unwrap().get(), 50);
        assert_eq!(PageSize::from_request(1).unwrap().get(), 1);
        assert_eq!(PageSize::from_request(500).unwrap().get(), 500);
        assert_eq!(PageSize::from_request(501).unwrap().get(), 500);
        assert_eq!(PageSize::from_request(i32::MAX).unwrap().get(), 500);
        assert_eq!(PageSize::from_request(-1), Err(NegativePageSize));
        assert_eq!(PageSize::from_request(i32::MIN), Err(NegativePageSize));
    }
}
