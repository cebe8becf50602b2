//! Integers in request bodies as JSON Schema counts them: `3` and `3.0`
//! are the same integer there, so the API takes both (and refuses `3.5`).

use serde::de::{Deserializer, Error, Visitor};
use std::fmt;

struct Integral;

impl Visitor<'_> for Integral {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
        // Exactly representable and whole: 2^63 itself is out of range.
        if v.fract() == 0.0 && v >= -(2f64.powi(63)) && v < 2f64.powi(63) {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
}

/// An `i64` field that also takes a whole number written as a float.
pub fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Integral)
}

/// An `Option<i64>` field that also takes a whole number written as a float.
pub fn option_integral<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            integral(d).map(Some)
        }
    }
    d.deserialize_option(Optional)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::integral")]
        n: i64,
        #[serde(default, deserialize_with = "super::option_integral")]
        o: Option<i64>,
    }

    fn read(text: &str) -> Result<(i64, Option<i64>), serde_json::Error> {
        serde_json::from_str::<T>(text).map(|t| (t.n, t.o))
    }

    #[test]
    fn whole_floats_are_integers_and_others_are_refused() {
        assert_eq!(read(r#"{"n": 3, "o": 4}"#).unwrap(), (3, Some(4)));
        assert_eq!(read(r#"{"n": 3.0, "o": -4.0}"#).unwrap(), (3, Some(-4)));
        assert_eq!(read(r#"{"o": null}"#).unwrap(), (0, None));
        assert!(read(r#"{"n": 3.5}"#).is_err());
        assert!(read(r#"{"n": 1e300}"#).is_err());
        assert!(read(r#"{"n": 9223372036854775808}"#).is_err());
        assert!(read(r#"{"n": "3"}"#).is_err());
    }
}
