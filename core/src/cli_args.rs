//! The flags of `verify` and `inspect`, and of which keys to trust, declared once: `ferry verify
//! FILE` and `./installer verify` must accept the same flags with the same help, and two copies
//! drift apart. Each binary flattens these into its own command line and hands the
//! [`options`](VerifyArgs::options) they yield to [`verify`](crate::verify) or
//! [`inspect`](crate::inspect).

use crate::inspect::InspectOptions;
use crate::verify::VerifyOptions;
use clap::Args;
use std::path::PathBuf;

/// Which signing keys to trust.
#[derive(Clone, Debug, Default, Args)]
pub struct TrustArgs {
    /// A trusted public key (`NAME.pub`). Repeatable. Keys in `FERRY_TRUSTED_KEYS` (colon-separated
    /// files or directories) and `/etc/ferry/trusted-keys/` are trusted too.
    #[arg(long = "key", value_name = "NAME.pub")]
    pub keys: Vec<PathBuf>,
    /// Accept a file with no signature (it is still reported loudly).
    #[arg(long)]
    pub allow_unsigned: bool,
}

/// The flags of `verify`.
#[derive(Clone, Debug, Default, Args)]
pub struct VerifyArgs {
    /// Which keys to trust.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl VerifyArgs {
    /// What [`verify::run`](crate::verify::run) is asked.
    pub fn options(&self) -> VerifyOptions {
        VerifyOptions { keys: self.trust.keys.clone(), allow_unsigned: self.trust.allow_unsigned, json: self.json }
    }
}

/// The flags of `inspect`.
#[derive(Clone, Debug, Default, Args)]
pub struct InspectArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl InspectArgs {
    /// What [`inspect::run`](crate::inspect::run) is asked.
    pub fn options(&self) -> InspectOptions {
        InspectOptions { json: self.json }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Verify {
        #[command(flatten)]
        args: VerifyArgs,
    }

    #[test]
    fn verify_flags_become_options() {
        let v = Verify::try_parse_from(["verify", "--key", "a.pub", "--key", "b.pub", "--allow-unsigned", "--json"])
            .unwrap();
        let o = v.args.options();
        assert_eq!(o.keys, [PathBuf::from("a.pub"), PathBuf::from("b.pub")]);
        assert!(o.allow_unsigned && o.json);
        let o = Verify::try_parse_from(["verify"]).unwrap().args.options();
        assert!(o.keys.is_empty() && !o.allow_unsigned && !o.json);
    }
}
