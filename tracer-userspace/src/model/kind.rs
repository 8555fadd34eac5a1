//! What a descriptor refers to, as the report names it.

use serde::Serialize;

/// The `kind` of a descriptor in the report contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DescriptorKind {
    File,
    Socket,
    Pipe,
    Eventfd,
    Epoll,
    Timerfd,
    Signalfd,
    Memfd,
    Pidfd,
    Inotify,
    Other,
}

impl DescriptorKind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Socket => "socket",
            Self::Pipe => "pipe",
            Self::Eventfd => "eventfd",
            Self::Epoll => "epoll",
            Self::Timerfd => "timerfd",
            Self::Signalfd => "signalfd",
            Self::Memfd => "memfd",
            Self::Pidfd => "pidfd",
            Self::Inotify => "inotify",
            Self::Other => "other",
        }
    }

    /// Plural noun for summaries: "3 sockets".
    pub(crate) const fn plural(self) -> &'static str {
        match self {
            Self::File => "files",
            Self::Socket => "sockets",
            Self::Pipe => "pipes",
            Self::Eventfd => "eventfds",
            Self::Epoll => "epoll instances",
            Self::Timerfd => "timerfds",
            Self::Signalfd => "signalfds",
            Self::Memfd => "memfds",
            Self::Pidfd => "pidfds",
            Self::Inotify => "inotify instances",
            Self::Other => "other descriptors",
        }
    }
}
