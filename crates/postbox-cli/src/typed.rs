//! Typed services from the command line: `postbox call NAME METHOD JSON` and the methods
//! `postbox ls` lists under each service. The schema comes from the running service; JSON is
//! turned into the method's arguments, and its result back into JSON, by the shapes in it.

use crate::output::outln;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postbox::rpc::{Client, RpcError};
use postbox::Node;
use postbox_rpc::json::{args_to_postcard, from_postcard};

/// Calls `method` of the typed service on `name` with `args` (JSON: an array of the
/// arguments in order, or an object by argument name) and prints the result as JSON.
pub(crate) fn call(name: &str, method: &str, args: &str, timeout: Option<Duration>) -> Result<()> {
    let node = Node::attach()?;
    let client = Client::describe(&node, name).with_context(|| format!("describe {name}"))?;
    let client = match timeout {
        Some(timeout) => client.with_timeout(timeout),
        None => client,
    };
    let Some(schema) = client.schema().method(method).cloned() else {
        let known: Vec<&str> = client.schema().methods.iter().map(|m| m.name.as_str()).collect();
        bail!("{name} has no method {method}; it has: {}", known.join(", "));
    };
    let args: serde_json::Value = serde_json::from_str(args)
        .with_context(|| format!("the arguments are not JSON: {args}"))?;
    let encoded = args_to_postcard(&args, &schema.args)
        .with_context(|| format!("arguments of {}", schema.signature()))?;
    match client.call_encoded(method, &encoded) {
        Ok(result) => {
            let value = from_postcard(&result, &schema.ok).context("decoding the result")?;
            outln!("{value}")?;
            Ok(())
        }
        Err(RpcError::Remote(error)) => {
            let value = match &schema.err {
                Some(shape) => from_postcard(&error, shape).context("decoding the error")?,
                None => bail!("{name}.{method} answered with an error it does not declare"),
            };
            bail!("{name}.{method} failed: {value}")
        }
        Err(e) => bail!("{name}.{method}: {e}"),
    }
}

/// The signatures of the methods of the typed service on `name`, one per line; the reason
/// when it does not describe itself.
pub(crate) fn methods(node: &Node, name: &str) -> Vec<String> {
    match Client::describe(node, name) {
        Ok(client) => client.schema().methods.iter().map(|m| m.signature()).collect(),
        Err(e) => vec![format!("(does not describe itself: {e})")],
    }
}
