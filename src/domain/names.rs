//! The names of the domain's enums. Each enum derives them once, with strum
//! (`Display`, `EnumString`, `IntoStaticStr`, `VariantArray`); this trait
//! gives every such enum the same `as_str`.

/// An enum value with a fixed name (its stored and logged form).
pub trait Named: Copy + Into<&'static str> {
    /// The name.
    fn as_str(self) -> &'static str {
        self.into()
    }
}

impl<T: Copy + Into<&'static str>> Named for T {}
