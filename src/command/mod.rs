//! What the proxy must know about a command: whether it may write, whether it may block, and whether it
//! changes the state of the client's session. Everything else about a command is the backend's business.

mod table;

/// The class of a command, by its name (and for container commands, its subcommand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Reads data only.
    Read,
    /// May change data or replicate: held while writes are paused.
    Write,
    /// Reads, and may block the connection (XREAD BLOCK).
    BlockingRead,
    /// Writes, and may block the connection (BLPOP, BLMOVE, BZPOPMIN, XREADGROUP BLOCK, ...).
    BlockingWrite,
    Auth,
    Hello,
    Select,
    /// CLIENT: SETNAME, REPLY and TRACKING change the session; other subcommands only read.
    Client,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE.
    Subscribe,
    /// UNSUBSCRIBE, PUNSUBSCRIBE, SUNSUBSCRIBE.
    Unsubscribe,
    Monitor,
    Quit,
    Reset,
    ReadOnly,
    ReadWrite,
    Eval,
    EvalSha,
    /// SCRIPT: LOAD and FLUSH replicate; other subcommands only read.
    Script,
    /// FUNCTION: LOAD, DELETE, FLUSH and RESTORE write.
    Function,
    /// XGROUP: CREATE, SETID, DESTROY, CREATECONSUMER and DELCONSUMER write.
    XGroup,
    /// SYNC and PSYNC: the connection becomes a replication stream.
    Replication,
    /// `POST` and `Host:`: an HTTP request sent to a Redis port. Redis drops such a connection at once.
    SecurityWarning,
    /// Not a Redis 7.0 command (a module's, or a newer version's): treated as a possible write.
    Unknown,
}

impl Command {
    /// Classifies a command by its name, in any letter case: the name is upper-cased once into a stack buffer, then
    /// found in a hash index of the table (one hash and, mostly, one comparison: this runs for every request).
    pub fn classify(name: &[u8]) -> Command {
        Command::lookup(name).0
    }

    /// [`Command::classify`], with the command's place in the table (for the census of commands sent).
    pub fn lookup(name: &[u8]) -> (Command, CommandId) {
        let unknown = (Command::Unknown, CommandId::UNKNOWN);
        let mut upper = [0u8; 32];
        let Some(upper) = upper.get_mut(..name.len()) else {
            return unknown;
        };
        for (to, from) in upper.iter_mut().zip(name) {
            *to = from.to_ascii_uppercase();
        }
        let upper: &[u8] = upper;
        let index = &*INDEX;
        let mut slot = slot_of(upper);
        loop {
            match index[slot] {
                EMPTY => return unknown,
                i => {
                    let (known, command) = table::COMMANDS[usize::from(i)];
                    if known == upper {
                        return (command, CommandId(i));
                    }
                }
            }
            slot = (slot + 1) % SLOTS;
        }
    }

    /// Whether the command may change data or be replicated, given its first argument (the subcommand of a
    /// container command). Unknown commands count as writes: holding a read costs a little latency during a
    /// pause, while letting a write through would lose it.
    pub fn is_write(self, subcommand: Option<&[u8]>) -> bool {
        let sub_is = |names: &[&[u8]]| subcommand.is_some_and(|s| names.iter().any(|n| s.eq_ignore_ascii_case(n)));
        match self {
            Command::Write | Command::BlockingWrite | Command::Unknown | Command::Eval | Command::EvalSha => true,
            Command::Script => sub_is(&[b"LOAD", b"FLUSH"]),
            Command::Function => sub_is(&[b"LOAD", b"DELETE", b"FLUSH", b"RESTORE"]),
            Command::XGroup => sub_is(&[b"CREATE", b"SETID", b"DESTROY", b"CREATECONSUMER", b"DELCONSUMER"]),
            _ => false,
        }
    }

    /// Whether the command may block its connection until data arrives or a timeout passes.
    pub fn is_blocking(self) -> bool {
        matches!(self, Command::BlockingRead | Command::BlockingWrite)
    }
}

/// A command's place in the table of Redis 7.0's commands, or [`CommandId::UNKNOWN`] for any other name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandId(u16);

impl CommandId {
    /// A name outside the table (a module's command, a newer version's, a typo).
    pub const UNKNOWN: CommandId = CommandId(u16::MAX);
    /// How many commands the table has: every id but [`CommandId::UNKNOWN`] is below.
    pub const COUNT: usize = table::COMMANDS.len();

    /// The id's position in the table, `None` for [`CommandId::UNKNOWN`].
    pub fn index(self) -> Option<usize> {
        (self != CommandId::UNKNOWN).then_some(usize::from(self.0))
    }

    /// The command at `index` of the table, upper case.
    pub fn name_at(index: usize) -> Option<&'static str> {
        let (name, _) = table::COMMANDS.get(index)?;
        std::str::from_utf8(name).ok()
    }

    /// Whether the command's first argument names a subcommand whose behaviour is its own (`CONFIG GET`,
    /// `CLIENT KILL`, `XINFO STREAM`, ...): the census counts those by subcommand.
    pub fn has_subcommands(self) -> bool {
        self.index().is_some_and(|i| CONTAINERS[i])
    }
}

/// Whether each command of the table is a container of subcommands (see [`CommandId::has_subcommands`]), by
/// position: built on first use, as it is asked for every request.
static CONTAINERS: std::sync::LazyLock<Vec<bool>> = std::sync::LazyLock::new(|| {
    const NAMES: &[&[u8]] = &[
        b"ACL",
        b"CLIENT",
        b"CLUSTER",
        b"COMMAND",
        b"CONFIG",
        b"FUNCTION",
        b"LATENCY",
        b"MEMORY",
        b"MODULE",
        b"OBJECT",
        b"PUBSUB",
        b"SCRIPT",
        b"SLOWLOG",
        b"XGROUP",
        b"XINFO",
    ];
    table::COMMANDS.iter().map(|(name, _)| NAMES.contains(name)).collect()
});

/// Slots of the command index: a power of two over four times the table's size, so that probes are short.
const SLOTS: usize = 1024;
/// A slot of the index with no command.
const EMPTY: u16 = u16::MAX;

/// The command table's positions by the hash of their names, with linear probing. Built on first use.
static INDEX: std::sync::LazyLock<[u16; SLOTS]> = std::sync::LazyLock::new(|| {
    let mut index = [EMPTY; SLOTS];
    for (i, (name, _)) in table::COMMANDS.iter().enumerate() {
        let mut slot = slot_of(name);
        while index[slot] != EMPTY {
            slot = (slot + 1) % SLOTS;
        }
        index[slot] = i as u16;
    }
    index
});

/// The first slot of a name (FNV-1a).
fn slot_of(name: &[u8]) -> usize {
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash as usize) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_the_table_is_found_by_its_name() {
        assert!(table::COMMANDS.windows(2).all(|w| w[0].0 < w[1].0), "no name twice");
        for (name, command) in table::COMMANDS {
            assert_eq!(Command::classify(name), *command, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn a_command_s_id_names_it_and_says_whether_it_has_subcommands() {
        let (command, id) = Command::lookup(b"config");
        assert_eq!(command, Command::Read);
        assert_eq!(id.index().and_then(CommandId::name_at), Some("CONFIG"));
        assert!(id.has_subcommands());
        assert!(!Command::lookup(b"GET").1.has_subcommands());
        assert_eq!(Command::lookup(b"my.module"), (Command::Unknown, CommandId::UNKNOWN));
        assert_eq!(CommandId::UNKNOWN.index(), None);
        assert!(!CommandId::UNKNOWN.has_subcommands());
    }

    #[test]
    fn classification() {
        assert_eq!(Command::classify(b"get"), Command::Read);
        assert_eq!(Command::classify(b"SeT"), Command::Write);
        assert_eq!(Command::classify(b"blpop"), Command::BlockingWrite);
        assert_eq!(Command::classify(b"xread"), Command::BlockingRead);
        assert_eq!(Command::classify(b"hello"), Command::Hello);
        assert_eq!(Command::classify(b"Host:"), Command::SecurityWarning);
        assert_eq!(Command::classify(b"my.module"), Command::Unknown);
        assert_eq!(Command::classify(b""), Command::Unknown);
        assert_eq!(Command::classify(b"GETX"), Command::Unknown);
        assert_eq!(Command::classify(&[b'A'; 40]), Command::Unknown);
    }

    #[test]
    fn writes() {
        assert!(Command::classify(b"incr").is_write(None));
        assert!(Command::classify(b"publish").is_write(None));
        assert!(!Command::classify(b"get").is_write(None));
        assert!(Command::classify(b"script").is_write(Some(b"load")));
        assert!(!Command::classify(b"script").is_write(Some(b"exists")));
        assert!(Command::classify(b"xgroup").is_write(Some(b"create")));
        assert!(Command::classify(b"unknowncmd").is_write(None));
    }
}
