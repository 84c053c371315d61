//! `outrider validate`: every problem, one a line, or a summary of what the node would do.

use std::process::ExitCode;

use clap::Args;

use crate::SpecArgs;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    if args.spec.config.is_empty() {
        eprintln!("outrider validate: give at least one --config PATH");
        return ExitCode::from(1);
    }
    let selector = match args.spec.selector() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match outrider_config::build(&args.spec.config, &selector) {
        Ok(built) => {
            for w in &built.warnings {
                println!("{w}");
            }
            print!("{}", built.snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            let errors = problems
                .iter()
                .filter(|p| p.severity == outrider_config::Severity::Error)
                .count();
            eprintln!("{errors} error(s): configuration refused");
            ExitCode::from(1)
        }
    }
}
