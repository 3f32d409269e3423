//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: tandem verifies its clients'
//! passwords with it, and logs in to servers that ask for it. No channel binding is offered.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::random::secure_bytes;

/// The mechanism's name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations used for the salted password tandem checks clients against.
const ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `Hi()`: PBKDF2 with HMAC-SHA-256, one block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut previous = hmac(password, &block);
    let mut result = previous;
    for _ in 1..iterations {
        previous = hmac(password, &previous);
        for (byte, next) in result.iter_mut().zip(previous) {
            *byte ^= next;
        }
    }
    result
}

fn nonce() -> Result<String, ScramError> {
    Ok(BASE64.encode(secure_bytes::<18>().map_err(unpredictable)?))
}

fn unpredictable(err: getrandom::Error) -> ScramError {
    ScramError(format!("no secure random bytes: {err}"))
}

/// The `name=value` attributes of a SCRAM message.
fn attribute(message: &str, name: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError(pub String);

/// The server side of one exchange, checking a client against `password`.
#[derive(Debug)]
pub struct ScramServer {
    salted: [u8; 32],
    salt: Vec<u8>,
    server_nonce: String,
    state: Option<(String, String)>,
}

impl ScramServer {
    /// A new exchange for `password`.
    ///
    /// # Errors
    /// When no secure random bytes can be had for the salt and nonce.
    pub fn new(password: &str) -> Result<ScramServer, ScramError> {
        let salt = secure_bytes::<16>().map_err(unpredictable)?.to_vec();
        Ok(ScramServer {
            salted: salted_password(password.as_bytes(), &salt, ITERATIONS),
            salt,
            server_nonce: nonce()?,
            state: None,
        })
    }

    /// Answers the client-first-message with the server-first-message.
    ///
    /// # Errors
    /// When the message is malformed or asks for channel binding.
    pub fn first(&mut self, client_first: &str) -> Result<String, ScramError> {
        let bare = client_first
            .strip_prefix("n,,")
            .or_else(|| client_first.strip_prefix("y,,"))
            .ok_or_else(|| ScramError("channel binding is not offered".to_owned()))?;
        let client_nonce = attribute(bare, 'r')
            .filter(|nonce| !nonce.is_empty())
            .ok_or_else(|| ScramError("the client-first-message has no nonce".to_owned()))?;
        let server_first = format!(
            "r={client_nonce}{},s={},i={ITERATIONS}",
            self.server_nonce,
            BASE64.encode(&self.salt)
        );
        let gs2 = &client_first[..client_first.len() - bare.len()];
        self.state = Some((format!("{bare},{server_first}"), gs2.to_owned()));
        Ok(server_first)
    }

    /// Checks the client-final-message; returns the server-final-message when the proof holds.
    ///
    /// # Errors
    /// When the message is malformed or the proof is wrong (a wrong password).
    pub fn last(&self, client_final: &str) -> Result<String, ScramError> {
        let (first_messages, gs2) = self
            .state
            .as_ref()
            .ok_or_else(|| ScramError("the exchange has not started".to_owned()))?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError("the client-final-message has no proof".to_owned()))?;
        if attribute(without_proof, 'c') != Some(BASE64.encode(gs2).as_str()) {
            return Err(ScramError("unexpected channel binding".to_owned()));
        }
        let combined_nonce = attribute(without_proof, 'r').unwrap_or_default();
        if !combined_nonce.ends_with(&self.server_nonce) {
            return Err(ScramError("the nonce does not match".to_owned()));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError("the proof is not base64".to_owned()))?;
        let auth_message = format!("{first_messages},{without_proof}");
        let client_key = hmac(&self.salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let recovered: Vec<u8> = proof.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        let recovered_stored: [u8; 32] = Sha256::digest(&recovered).into();
        if proof.len() != 32 || recovered_stored != stored_key {
            return Err(ScramError("password authentication failed".to_owned()));
        }
        let server_key = hmac(&self.salted, b"Server Key");
        Ok(format!(
            "v={}",
            BASE64.encode(hmac(&server_key, auth_message.as_bytes()))
        ))
    }
}

/// The client side of one exchange, logging in with `password`.
#[derive(Debug)]
pub struct ScramClient {
    password: String,
    client_nonce: String,
    state: Option<(String, [u8; 32])>,
}

impl ScramClient {
    /// A new exchange.
    ///
    /// # Errors
    /// When no secure random bytes can be had for the nonce.
    pub fn new(password: &str) -> Result<ScramClient, ScramError> {
        Ok(ScramClient {
            password: password.to_owned(),
            client_nonce: nonce()?,
            state: None,
        })
    }

    /// The client-first-message.
    #[must_use]
    pub fn first(&self) -> String {
        format!("n,,n=,r={}", self.client_nonce)
    }

    /// Answers the server-first-message with the client-final-message.
    ///
    /// # Errors
    /// When the message is malformed or the server's nonce does not extend ours.
    pub fn last(&mut self, server_first: &str) -> Result<String, ScramError> {
        let malformed = || ScramError("malformed server-first-message".to_owned());
        let nonce = attribute(server_first, 'r').ok_or_else(malformed)?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError(
                "the server's nonce does not extend ours".to_owned(),
            ));
        }
        let salt = BASE64
            .decode(attribute(server_first, 's').ok_or_else(malformed)?)
            .map_err(|_| malformed())?;
        let iterations: u32 = attribute(server_first, 'i')
            .and_then(|text| text.parse().ok())
            .filter(|iterations| *iterations > 0)
            .ok_or_else(malformed)?;
        let salted = salted_password(self.password.as_bytes(), &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=,r={},{server_first},{without_proof}", self.client_nonce);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.state = Some((auth_message, server_key));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Checks the server-final-message (the server proves it knows the password too).
    ///
    /// # Errors
    /// When the server's signature is wrong.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let (auth_message, server_key) = self
            .state
            .as_ref()
            .ok_or_else(|| ScramError("the exchange has not started".to_owned()))?;
        let expected = BASE64.encode(hmac(server_key, auth_message.as_bytes()));
        if attribute(server_final, 'v') == Some(expected.as_str()) {
            Ok(())
        } else {
            Err(ScramError("the server's signature is wrong".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_agree_only_on_the_same_password() {
        let mut server = ScramServer::new("s3cret").unwrap();
        let mut client = ScramClient::new("s3cret").unwrap();
        let server_first = server.first(&client.first()).unwrap();
        let client_final = client.last(&server_first).unwrap();
        let server_final = server.last(&client_final).unwrap();
        client.verify(&server_final).unwrap();

        let mut server = ScramServer::new("s3cret").unwrap();
        let mut wrong = ScramClient::new("guess").unwrap();
        let server_first = server.first(&wrong.first()).unwrap();
        let client_final = wrong.last(&server_first).unwrap();
        assert_eq!(
            server.last(&client_final).unwrap_err(),
            ScramError("password authentication failed".to_owned())
        );
        assert!(ScramServer::new("x")
            .unwrap()
            .first("p=tls-server-end-point,,n=,r=abc")
            .is_err());
    }

    #[test]
    fn salted_passwords_match_the_rfc_7677_example() {
        // RFC 7677, section 3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof: Vec<u8> = client_key
            .iter()
            .zip(hmac(&stored, auth.as_bytes()))
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }
}
