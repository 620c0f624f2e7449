//! CEL expressions over events: trigger filters (`event`), wait matches and cancel rules
//! (`event` = the run's trigger, `async` = the arriving event).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cel::{Context, Program};
use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExprError {
    #[error("expression `{expression}` does not parse: {message}")]
    Parse { expression: String, message: String },
    #[error("expression `{expression}` failed: {message}")]
    Eval { expression: String, message: String },
}

/// Compiled expressions, shared by every evaluation.
#[derive(Default)]
pub struct Expressions {
    compiled: Mutex<HashMap<String, Arc<Program>>>,
}

impl Expressions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that an expression parses (for validating function definitions).
    pub fn validate(expression: &str) -> Result<(), ExprError> {
        Program::compile(expression)
            .map(|_| ())
            .map_err(|e| ExprError::Parse {
                expression: expression.to_owned(),
                message: e.to_string(),
            })
    }

    fn program(&self, expression: &str) -> Result<Arc<Program>, ExprError> {
        if let Ok(cache) = self.compiled.lock()
            && let Some(program) = cache.get(expression)
        {
            return Ok(program.clone());
        }
        let program = Arc::new(Program::compile(expression).map_err(|e| ExprError::Parse {
            expression: expression.to_owned(),
            message: e.to_string(),
        })?);
        if let Ok(mut cache) = self.compiled.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(expression.to_owned(), program.clone());
        }
        Ok(program)
    }

    /// Evaluates a boolean expression. A result that is not a boolean is an error.
    pub fn matches(
        &self,
        expression: &str,
        event: &Value,
        async_event: Option<&Value>,
    ) -> Result<bool, ExprError> {
        let program = self.program(expression)?;
        let eval_error = |message: String| ExprError::Eval {
            expression: expression.to_owned(),
            message,
        };
        let mut context = Context::default();
        context
            .add_variable("event", event)
            .map_err(|e| eval_error(e.to_string()))?;
        if let Some(candidate) = async_event {
            context
                .add_variable("async", candidate)
                .map_err(|e| eval_error(e.to_string()))?;
        }
        match program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(eval_error(format!("evaluated to {other:?}, not a boolean"))),
            Err(e) => Err(eval_error(e.to_string())),
        }
    }

    /// Evaluates an expression to a JSON value (webhook transforms, keys).
    pub fn evaluate(
        &self,
        expression: &str,
        variables: &[(&str, &Value)],
    ) -> Result<Value, ExprError> {
        let program = self.program(expression)?;
        let eval_error = |message: String| ExprError::Eval {
            expression: expression.to_owned(),
            message,
        };
        let mut context = Context::default();
        for (name, value) in variables {
            context
                .add_variable(*name, *value)
                .map_err(|e| eval_error(e.to_string()))?;
        }
        let value = program
            .execute(&context)
            .map_err(|e| eval_error(e.to_string()))?;
        to_json(&value).ok_or_else(|| eval_error(format!("{value:?} cannot be expressed as JSON")))
    }
}

fn to_json(value: &cel::Value) -> Option<Value> {
    Some(match value {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(items) => Value::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        cel::Value::Map(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        cel::Value::Timestamp(t) => Value::String(t.to_rfc3339()),
        cel::Value::Duration(d) => Value::String(flowforge_domain::duration::format(*d)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_and_matches_over_events() {
        let exprs = Expressions::new();
        let event = json!({"name": "order/created", "data": {"total": 150, "customer": "c1"}});
        assert!(
            exprs
                .matches("event.data.total > 100", &event, None)
                .unwrap()
        );
        assert!(
            !exprs
                .matches("event.data.total > 200", &event, None)
                .unwrap()
        );
        let shipped = json!({"name": "order/shipped", "data": {"customer": "c1"}});
        assert!(
            exprs
                .matches(
                    "event.data.customer == async.data.customer",
                    &event,
                    Some(&shipped)
                )
                .unwrap()
        );
        assert!(matches!(
            exprs.matches("event.data.total", &event, None),
            Err(ExprError::Eval { .. })
        ));
        assert!(matches!(
            Expressions::validate("event.data.total >"),
            Err(ExprError::Parse { .. })
        ));
    }

    #[test]
    fn evaluates_transforms_to_json() {
        let exprs = Expressions::new();
        let body = json!({"action": "opened", "pull_request": {"number": 7}});
        let value = exprs
            .evaluate(
                "{'name': 'github/pr.' + body.action, 'data': {'number': body.pull_request.number}}",
                &[("body", &body)],
            )
            .unwrap();
        assert_eq!(
            value,
            json!({"name": "github/pr.opened", "data": {"number": 7}})
        );
    }
}
