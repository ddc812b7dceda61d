//! The Dockerfile frontend: text in, a resolved per-platform build plan out.
//!
//! Pure: no I/O beyond reading the files it is handed. `parser` turns text into positioned
//! logical lines (directives, continuations, heredocs); `instructions` types them into the
//! syntax tree of `ast` (with `flags`
//! and `mount`); `shell` expands variables the way Docker's shell lexer does; `resolve` applies
//! ARG scoping, builds the stage graph and expands every instruction for one target platform
//! (with `semantics` for what an expanded instruction means);
//! `lint` runs BuildKit's build checks; `print` writes instructions back; `dockerignore` filters the build context.

pub mod ast;
pub mod dockerignore;
pub mod error;
pub mod flags;
pub mod instructions;
pub mod line;
pub mod lint;
pub mod mount;
pub mod parser;
pub mod print;
pub mod resolve;
pub mod semantics;
pub mod shell;

pub use error::{ErrorKind, FrontendError, Pos};
pub use instructions::{Dockerfile, Instruction, Located};
pub use parser::parse;
pub use resolve::{resolve, BuildPlan, Options};
