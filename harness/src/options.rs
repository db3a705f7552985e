//! The command lines of the harness's load binaries (`loadclient`, `rudeclient`): positional
//! arguments, then `--flag value` pairs; a mistake ends the program with its usage.

/// One binary's name and usage line.
pub struct Usage {
    pub program: &'static str,
    pub text: &'static str,
}

impl Usage {
    /// Print `msg` and the usage, and exit with status 2.
    pub fn fail(&self, msg: &str) -> ! {
        eprintln!("{}: {msg}\n{}", self.program, self.text);
        std::process::exit(2);
    }

    /// `options` as (flag, value) pairs; every flag needs a value.
    pub fn pairs<'a>(&self, options: &'a [String]) -> Vec<(&'a str, &'a str)> {
        options
            .chunks(2)
            .map(|pair| match pair {
                [flag, value] => (flag.as_str(), value.as_str()),
                [flag] => self.fail(&format!("{flag} needs a value")),
                _ => unreachable!("chunks of two"),
            })
            .collect()
    }

    /// `value` of `flag` as a number.
    pub fn number<T: std::str::FromStr>(&self, flag: &str, value: &str) -> T {
        value
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("{flag}: bad value {value}")))
    }
}
