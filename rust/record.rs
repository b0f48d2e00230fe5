//! Records whose field list is written once: [`record!`](crate::record) declares the struct and,
//! from the same list, its fields by name ([`Field`]), which the bindings turn into Python's dict.
//! Adding a field to such a record touches that one list.

/// One field's value as Python receives it: counts as `int`, flags as `int` (0 or 1), the rest as
/// `float`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    Count(u64),
    Flag(bool),
    Real(f64),
}

impl From<u64> for Field {
    fn from(v: u64) -> Self {
        Field::Count(v)
    }
}

impl From<bool> for Field {
    fn from(v: bool) -> Self {
        Field::Flag(v)
    }
}

impl From<f64> for Field {
    fn from(v: f64) -> Self {
        Field::Real(v)
    }
}

/// Declares a struct of named fields and `fields(&self)`, its `(name, value)` pairs in declaration
/// order (each field's type converts into [`Field`]).
#[macro_export]
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// The fields by name, in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, $crate::record::Field)> {
                [$( (stringify!($field), $crate::record::Field::from(self.$field)), )*].into_iter()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Field;

    crate::record! {
        /// A record for the test.
        #[derive(Debug, Clone, Copy)]
        pub struct Sample {
            pub n: u64,
            /// a documented field
            pub on: bool,
            pub mean: f64,
        }
    }

    #[test]
    fn fields_in_declaration_order() {
        let s = Sample {
            n: 3,
            on: true,
            mean: -0.5,
        };
        let got: Vec<_> = s.fields().collect();
        assert_eq!(
            got,
            vec![
                ("n", Field::Count(3)),
                ("on", Field::Flag(true)),
                ("mean", Field::Real(-0.5)),
            ]
        );
    }
}
