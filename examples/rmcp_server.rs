//! A tiny MCP server built with the official Rust SDK (`rmcp` 3.9.0), served over our own
//! stdin/stdout. Used by tests as an SDK-made peer.
//!
//! - tool `echo {text}`: returns `text` as one text content item.
//! - tool `add {a, b}` (i64): returns the sum as text.
//! - prompt `greet {name}`: one user message.
//! - resource `memo://greeting`: a fixed text.
//!
//! Logs nothing: stdout is the transport.

// Example code: clarity over pedantry.
#![allow(clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    Implementation, ListResourcesResult, PromptMessage, ReadResourceResult, Resource,
    ResourceContents, Role, ServerCapabilities, ServerConfig,
};
use rmcp::transport::stdio;
use rmcp::{
    ServerHandler, ServiceExt, prompt, prompt_handler, prompt_router, tool, tool_handler,
    tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;

const GREETING_URI: &str = "memo://greeting";
const GREETING_TEXT: &str = "Hello from the rmcp example server.";

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// The left operand.
    a: i64,
    /// The right operand.
    b: i64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct GreetArgs {
    /// Who to greet.
    name: String,
}

#[derive(Debug, Clone)]
struct ExampleServer {
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

impl ExampleServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }
}

#[tool_router]
impl ExampleServer {
    #[tool(description = "Return the given text as one text content item.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers; the sum comes back as text.")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        // i128 holds any sum of two i64s: no overflow, no panic.
        (i128::from(a) + i128::from(b)).to_string()
    }
}

#[prompt_router]
impl ExampleServer {
    #[prompt(
        name = "greet",
        description = "A user message asking to greet someone."
    )]
    fn greet(&self, Parameters(GreetArgs { name }): Parameters<GreetArgs>) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!("Please greet {name}."),
        )]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for ExampleServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "rmcp-example-server",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Tools: echo {text}, add {a, b}. Prompt: greet {name}. Resource: memo://greeting.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<ListResourcesResult, rmcp::ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(GREETING_URI, "greeting")
                .with_description("A fixed greeting text.")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, rmcp::ErrorData> {
        if request.uri != GREETING_URI {
            return Err(rmcp::ErrorData::resource_not_found(
                format!("no such resource: {}", request.uri),
                None,
            ));
        }
        let contents = ResourceContents::text(GREETING_TEXT, request.uri);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Serve until the client closes our stdin (or the session otherwise ends).
    let service = ExampleServer::new().serve(stdio()).await?;
    service.waiting().await?;
    Ok(())
}
