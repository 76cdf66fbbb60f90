//! MCP method names.
//!
//! Known methods are an enum so stages can match on them without string compares or allocation;
//! any other name is kept as [`Method::Other`] and forwarded untouched.

use std::fmt;

macro_rules! methods {
    ($($variant:ident => $name:literal,)*) => {
        /// A JSON-RPC method name, with MCP's methods named.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Method {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
            /// Any method Shadowcat has no name for.
            Other(Box<str>),
        }

        impl Method {
            /// Looks a method name up.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($name => Self::$variant,)*
                    other => Self::Other(other.into()),
                }
            }

            /// The name of a known method, `other` for any other: a label of bounded
            /// cardinality for metrics.
            pub fn label(&self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(_) => "other",
                }
            }

            /// The method name as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(name) => name,
                }
            }
        }
    };
}

methods! {
    Initialize => "initialize",
    Initialized => "notifications/initialized",
    Ping => "ping",
    Cancelled => "notifications/cancelled",
    Progress => "notifications/progress",
    ServerDiscover => "server/discover",
    ToolsList => "tools/list",
    ToolsCall => "tools/call",
    ToolsListChanged => "notifications/tools/list_changed",
    ResourcesList => "resources/list",
    ResourcesTemplatesList => "resources/templates/list",
    ResourcesRead => "resources/read",
    ResourcesSubscribe => "resources/subscribe",
    ResourcesUnsubscribe => "resources/unsubscribe",
    ResourcesUpdated => "notifications/resources/updated",
    ResourcesListChanged => "notifications/resources/list_changed",
    PromptsList => "prompts/list",
    PromptsGet => "prompts/get",
    PromptsListChanged => "notifications/prompts/list_changed",
    CompletionComplete => "completion/complete",
    LoggingSetLevel => "logging/setLevel",
    LoggingMessage => "notifications/message",
    SamplingCreateMessage => "sampling/createMessage",
    ElicitationCreate => "elicitation/create",
    RootsList => "roots/list",
    RootsListChanged => "notifications/roots/list_changed",
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_and_unknown_names() {
        for name in [
            "initialize",
            "tools/call",
            "notifications/cancelled",
            "x/custom",
        ] {
            assert_eq!(Method::from_name(name).as_str(), name);
        }
        assert_eq!(Method::from_name("tools/call"), Method::ToolsCall);
        assert_eq!(
            Method::from_name("x/custom"),
            Method::Other("x/custom".into())
        );
    }
}
