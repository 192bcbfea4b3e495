//! `oms-devkeys init DIR` makes the development key pair; `oms-devkeys
//! token DIR SUBJECT [SCOPES]` prints a token signed with it.

use clap::{Parser, Subcommand};

use oms_devkeys::{CUSTOMER_SCOPES, DevKeys};

#[derive(Parser)]
#[command(name = "oms-devkeys", about = "Development keys and tokens")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes the key pair in DIR unless it exists, and prints the key set's path.
    Init {
        dir: String,
        /// Also copies the public key set (jwks.json alone) here, for
        /// services that must not see the private key.
        #[arg(long)]
        public_dir: Option<String>,
    },
    /// Makes a development CA and certificates in DIR unless they exist
    /// (ca.pem, server.pem and server-key.pem for every service, client.pem
    /// and client-key.pem for the gateway), and prints DIR.
    Certs { dir: String },
    /// Prints a token for SUBJECT (the customer id), making the keys first if needed.
    Token {
        dir: String,
        subject: String,
        /// Space-separated scopes: orders:read, orders:write, orders:admin.
        #[arg(default_value = CUSTOMER_SCOPES)]
        scopes: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Init { dir, public_dir } => {
            let keys = DevKeys::new(dir);
            let key = keys.load_or_create()?;
            let jwks_file = match public_dir {
                Some(public_dir) => {
                    let path = std::path::Path::new(&public_dir).join("jwks.json");
                    std::fs::create_dir_all(&public_dir)?;
                    std::fs::write(&path, &key.jwks)?;
                    path
                }
                None => keys.jwks_file(),
            };
            println!("{}", jwks_file.display());
        }
        Command::Certs { dir } => {
            oms_devkeys::certs::write(std::path::Path::new(&dir))?;
            println!("{dir}");
        }
        Command::Token {
            dir,
            subject,
            scopes,
            lifetime,
        } => {
            let key = DevKeys::new(dir).load_or_create()?;
            println!("{}", key.token(&subject, &scopes, lifetime)?);
        }
    }
    Ok(())
}
