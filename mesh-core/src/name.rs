//! Newtypes for the names that link resources together.
//!
//! Names are cheap to clone (`Arc<str>` inside) because the store, the
//! runtime and every route decision hold them. They compare and hash as
//! strings and can be looked up by `&str` through [`Borrow`].

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Creates a name from any string.
            pub fn new(name: impl Into<Arc<str>>) -> Self {
                Self(name.into())
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $ty {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }

        impl From<String> for $ty {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// The name of a [`Cluster`](crate::model::Cluster), and of its
    /// [`EndpointSet`](crate::model::EndpointSet).
    ///
    /// Clusters translated from Istio config follow Istio's naming,
    /// `outbound|<port>|<subset>|<fqdn>`, so the same names appear in
    /// Envoy's admin output, in istiod's xDS and here.
    ClusterName
);

name_type!(
    /// The name of a [`Listener`](crate::model::Listener).
    ListenerName
);

name_type!(
    /// The name of a [`RouteTable`](crate::model::RouteTable) (an xDS
    /// `RouteConfiguration`).
    RouteTableName
);
