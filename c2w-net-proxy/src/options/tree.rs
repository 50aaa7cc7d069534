//! [`Tree`]: the shape of a JavaScript options object (null, booleans, numbers, strings,
//! arrays, plain objects), and a serde `Deserializer` over it that names the path of the first
//! bad field (`limits.maxConnections`, `rewrites[0].url`) and shows every key to the derived
//! `deny_unknown_fields` check.
//!
//! Why not `serde_json::Value` with `serde_path_to_error`, or serde-wasm-bindgen: the first
//! pair costs the wasm module about 11 KB gzip, more than the 5% the composition may grow; the
//! second looks up only the fields a struct names, so typos would pass unseen. This is the
//! small part of both that the options need.

use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::OptionsError;

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: f64 = super::MAX_SAFE_INTEGER as f64;

/// A value of an options object.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    /// `null` or `undefined`: the option is absent.
    Null,
    /// A boolean.
    Bool(bool),
    /// A finite number.
    Number(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Tree>),
    /// A plain object, keys in their order.
    Object(Vec<(String, Tree)>),
}

/// Deserializes `T` from `tree`; the error names the path of the bad field.
pub fn from_tree<T: DeserializeOwned>(tree: Tree) -> Result<T, OptionsError> {
    T::deserialize(At {
        tree,
        path: String::new(),
    })
    .map_err(|err| OptionsError {
        path: err.path.unwrap_or_default(),
        reason: err.message,
    })
}

/// A deserialization error and, once known, where it happened.
#[derive(Debug)]
pub struct Error {
    path: Option<String>,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self {
            path: None,
            message: message.to_string(),
        }
    }
}

/// Gives an error raised below `path` that path, unless a deeper one already has.
fn located<T>(result: Result<T, Error>, path: &str) -> Result<T, Error> {
    result.map_err(|mut err| {
        err.path.get_or_insert_with(|| path.to_string());
        err
    })
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A tree and its path.
struct At {
    tree: Tree,
    path: String,
}

impl At {
    fn unexpected(&self) -> de::Unexpected<'_> {
        match &self.tree {
            Tree::Null => de::Unexpected::Unit,
            Tree::Bool(b) => de::Unexpected::Bool(*b),
            Tree::Number(n) => de::Unexpected::Float(*n),
            Tree::String(s) => de::Unexpected::Str(s),
            Tree::Array(_) => de::Unexpected::Seq,
            Tree::Object(_) => de::Unexpected::Map,
        }
    }
}

impl<'de> de::Deserializer<'de> for At {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let path = self.path;
        let result = match self.tree {
            Tree::Null => visitor.visit_unit(),
            Tree::Bool(b) => visitor.visit_bool(b),
            Tree::Number(n) if n.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(&n) => {
                visitor.visit_u64(n as u64)
            }
            Tree::Number(n) if n.fract() == 0.0 && (-MAX_SAFE_INTEGER..0.0).contains(&n) => {
                visitor.visit_i64(n as i64)
            }
            Tree::Number(n) => visitor.visit_f64(n),
            Tree::String(s) => visitor.visit_string(s),
            Tree::Array(items) => visitor.visit_seq(Items {
                items: items.into_iter().enumerate(),
                path: path.clone(),
            }),
            Tree::Object(entries) => visitor.visit_map(Entries {
                entries: entries.into_iter(),
                value: None,
                path: path.clone(),
            }),
        };
        located(result, &path)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.tree {
            Tree::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Only an object is a struct: an array must not fill the fields in order.
        if !matches!(self.tree, Tree::Object(_)) {
            let err = de::Error::invalid_type(self.unexpected(), &visitor);
            return located(Err(err), &self.path);
        }
        self.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// An array's items, each with its index in the path.
struct Items {
    items: std::iter::Enumerate<std::vec::IntoIter<Tree>>,
    path: String,
}

impl<'de> de::SeqAccess<'de> for Items {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some((i, tree)) => {
                let path = format!("{}[{i}]", self.path);
                seed.deserialize(At { tree, path }).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// An object's entries, each with its key in the path.
struct Entries {
    entries: std::vec::IntoIter<(String, Tree)>,
    /// The value of the key just read, and its path.
    value: Option<At>,
    path: String,
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, tree)) = self.entries.next() else {
            return Ok(None);
        };
        let path = child(&self.path, &key);
        let key_de: StrDeserializer<'_, Error> = key.as_str().into_deserializer();
        // An unknown field is refused while its key is read: name the key.
        let key = located(seed.deserialize(key_de), &path)?;
        self.value = Some(At { tree, path });
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(at) => seed.deserialize(at),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}
