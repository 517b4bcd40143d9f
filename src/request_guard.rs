//! `RequestGuard`: checks every GraphQL request before anything parses it.
//!
//! The GraphQL parser recurses once per nesting level of selections *and
//! values* (`[[[[…]]]]`, `{a: {a: {…}}}`), so a few kilobytes of brackets
//! overflow a worker thread's stack and abort the whole process. The depth
//! and complexity limits of async-graphql run only after parsing, too late.
//! So the query text is scanned first, in one linear pass that never
//! recurses: its size and its bracket nesting are bounded before the parser
//! sees it. The same check guards every path that parses a query (POST,
//! WebSocket `subscribe`, shared executions, see `fanout::Shape::of`).
//!
//! After parsing, string values are checked for NUL characters, which
//! PostgreSQL `text` cannot hold: a client gets `BAD_USER_INPUT` instead of
//! a database error.

use std::sync::Arc;

use async_graphql::{
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
    },
    parser::types::{ExecutableDocument, Selection, SelectionSet},
    Positioned, Request, ServerError, ServerResult, Value, Variables,
};

/// Bounds on the text of a query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Longest query text, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of `{`, `[` and `(` together (selections, lists,
    /// objects and argument lists all count).
    pub max_nesting: usize,
}

/// Why a query was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryRefusal {
    #[error("the query is {size} bytes; at most {limit} are accepted")]
    TooLong { size: usize, limit: usize },
    #[error("the query nests brackets deeper than {limit} levels")]
    TooDeep { limit: usize },
}

impl QueryLimits {
    /// Refuses a query that is too long or nested too deep. Linear in the
    /// text, constant stack: brackets inside strings and comments do not
    /// count.
    pub fn check(&self, query: &str) -> Result<(), QueryRefusal> {
        if query.len() > self.max_bytes {
            return Err(QueryRefusal::TooLong {
                size: query.len(),
                limit: self.max_bytes,
            });
        }
        let bytes = query.as_bytes();
        let mut depth = 0usize;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                        i += 1;
                    }
                }
                b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                    i += 3;
                    while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                        // `\"""` is an escaped triple quote inside a block string.
                        i += if bytes[i..].starts_with(b"\\\"\"\"") {
                            4
                        } else {
                            1
                        };
                    }
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'{' | b'[' | b'(' => {
                    depth += 1;
                    if depth > self.max_nesting {
                        return Err(QueryRefusal::TooDeep {
                            limit: self.max_nesting,
                        });
                    }
                }
                b'}' | b']' | b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }
}

/// The schema extension that applies [`QueryLimits`] and the NUL check to
/// every request the schema executes.
pub struct RequestGuard(pub QueryLimits);

impl ExtensionFactory for RequestGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard(self.0))
    }
}

struct Guard(QueryLimits);

#[async_graphql::async_trait::async_trait]
impl Extension for Guard {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        self.0
            .check(&request.query)
            .map_err(|refusal| ServerError::new(refusal.to_string(), None))?;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let nul_in_variables = variables.values().any(has_nul);
        if nul_in_variables || document_has_nul(&document) {
            return Err(ServerError::new(
                "text values may not contain the NUL character (\\u0000)",
                None,
            ));
        }
        Ok(document)
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::List(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(name, value)| name.contains('\0') || has_nul(value)),
        _ => false,
    }
}

fn document_has_nul(document: &ExecutableDocument) -> bool {
    let selection_sets = document
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set)
        .chain(
            document
                .fragments
                .values()
                .map(|fragment| &fragment.node.selection_set),
        );
    let defaults_have_nul = document.operations.iter().any(|(_, op)| {
        op.node.variable_definitions.iter().any(|definition| {
            definition
                .node
                .default_value
                .as_ref()
                .is_some_and(|value| has_nul(&value.node))
        })
    });
    if defaults_have_nul {
        return true;
    }
    // Nesting is bounded by `QueryLimits`, so this recursion is too.
    fn walk(set: &Positioned<SelectionSet>) -> bool {
        set.node.items.iter().any(|item| match &item.node {
            Selection::Field(field) => {
                let field = &field.node;
                field
                    .arguments
                    .iter()
                    .chain(field.directives.iter().flat_map(|d| &d.node.arguments))
                    .any(|(_, value)| literal_has_nul(&value.node))
                    || walk(&field.selection_set)
            }
            Selection::InlineFragment(fragment) => walk(&fragment.node.selection_set),
            Selection::FragmentSpread(_) => false,
        })
    }
    fn literal_has_nul(value: &async_graphql_value::Value) -> bool {
        use async_graphql_value::Value as V;
        match value {
            V::String(text) => text.contains('\0'),
            V::List(items) => items.iter().any(literal_has_nul),
            V::Object(fields) => fields.values().any(literal_has_nul),
            _ => false,
        }
    }
    selection_sets.into_iter().any(walk)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueryLimits = QueryLimits {
        max_bytes: 1000,
        max_nesting: 8,
    };

    #[test]
    fn refuses_deep_nesting_of_any_bracket() {
        let lists = format!(
            "{{ stock(symbol: {}\"A\"{}) {{ value }} }}",
            "[".repeat(9),
            "]".repeat(9)
        );
        assert_eq!(
            LIMITS.check(&lists),
            Err(QueryRefusal::TooDeep { limit: 8 })
        );
        let objects = format!("{{ a(w: {}) }}", "{a: ".repeat(8) + &"}".repeat(8));
        assert_eq!(
            LIMITS.check(&objects),
            Err(QueryRefusal::TooDeep { limit: 8 })
        );
        assert!(LIMITS.check("{ a { b(x: [1, {c: 2}]) { c } } }").is_ok());
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "[".repeat(50);
        assert!(LIMITS.check(&format!("{{ a(s: \"{deep}\") }}")).is_ok());
        assert!(LIMITS
            .check(&format!("{{ a(s: \"\"\"{deep} \\\"\"\" {deep}\"\"\") }}"))
            .is_ok());
        assert!(LIMITS.check(&format!("# {deep}\n{{ a }}")).is_ok());
        assert!(LIMITS.check(&format!("{{ a(s: \"\\\"{deep}\") }}")).is_ok());
        // An unterminated string ends the scan without a panic.
        assert!(LIMITS.check("{ a(s: \"\\").is_ok());
        assert!(LIMITS.check("{ a(s: \"\"\"").is_ok());
    }

    #[test]
    fn refuses_long_queries() {
        let long = format!("{{ a(s: \"{}\") }}", "x".repeat(1000));
        assert!(matches!(
            LIMITS.check(&long),
            Err(QueryRefusal::TooLong { limit: 1000, .. })
        ));
    }

    #[test]
    fn finds_nul_in_literals_and_variables() {
        let document = async_graphql::parser::parse_query("{ a(s: \"x\\u0000y\") }").unwrap();
        assert!(document_has_nul(&document));
        let document =
            async_graphql::parser::parse_query("query($s: String = \"x\\u0000\") { a(s: $s) }")
                .unwrap();
        assert!(document_has_nul(&document), "a variable's default");
        let document = async_graphql::parser::parse_query("{ a(s: [{t: \"ok\"}]) { b } }").unwrap();
        assert!(!document_has_nul(&document));
        assert!(has_nul(&Value::List(vec![Value::String("a\0".into())])));
    }
}
