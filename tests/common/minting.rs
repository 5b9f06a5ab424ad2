//! An in-process OpenID provider that can mint anything: good tokens, and every kind of bad one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use super::{full, spawn_upstream};

/// How the next ID token is made.
#[derive(Clone)]
pub struct Mint {
    pub signing: Signing,
    /// The `kid` written in the header.
    pub kid: String,
    /// Indexes of the keys the JWKS publishes.
    pub published: Vec<usize>,
    /// Claims merged over the good ones (`Value::Null` removes a claim).
    pub overrides: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with key `n`.
    Rsa(usize),
    /// `alg: none`, no signature.
    None,
    /// HS256 keyed with the RSA public key (the classic confusion attack).
    HmacWithPublicKey,
}

impl Default for Mint {
    fn default() -> Self {
        Mint {
            signing: Signing::Rsa(0),
            kid: "k0".into(),
            published: vec![0],
            overrides: json!({}),
        }
    }
}

struct Key {
    private_pem: String,
    public_pem: String,
    n: String,
    e: String,
}

/// The provider: change `mint` between sign-ins.
pub struct MintingProvider {
    pub addr: SocketAddr,
    pub issuer: String,
    pub mint: Arc<Mutex<Mint>>,
    pub jwks_fetches: Arc<AtomicU64>,
}

impl MintingProvider {
    pub async fn start(client_id: &'static str) -> Self {
        let keys: Arc<Vec<Key>> = Arc::new((0..2).map(|_| new_key()).collect());
        let mint = Arc::new(Mutex::new(Mint::default()));
        let jwks_fetches = Arc::new(AtomicU64::new(0));
        let nonce = Arc::new(Mutex::new(String::new()));
        let issuer_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
        let (m, f, n, i) = (mint.clone(), jwks_fetches.clone(), nonce.clone(), issuer_cell.clone());
        let addr = spawn_upstream(move |req: Request<Incoming>| {
            let (mint, fetches, nonce, issuer, keys) = (m.clone(), f.clone(), n.clone(), i.clone(), keys.clone());
            async move {
                let issuer = issuer.lock().unwrap().clone();
                let query: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
                let json_response = |v: Value| Response::builder().header("content-type", "application/json").body(full(v.to_string())).unwrap();
                match req.uri().path() {
                    "/.well-known/openid-configuration" => json_response(json!({
                        "issuer": issuer,
                        "authorization_endpoint": format!("{issuer}/authorize"),
                        "token_endpoint": format!("{issuer}/token"),
                        "jwks_uri": format!("{issuer}/jwks"),
                    })),
                    "/jwks" => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let published = mint.lock().unwrap().published.clone();
                        let list: Vec<Value> = published
                            .iter()
                            .map(|i| json!({"kty": "RSA", "kid": format!("k{i}"), "use": "sig", "alg": "RS256", "n": keys[*i].n, "e": keys[*i].e}))
                            .collect();
                        json_response(json!({ "keys": list }))
                    }
                    "/authorize" => {
                        *nonce.lock().unwrap() = query.get("nonce").cloned().unwrap_or_default();
                        let mut back = url::Url::parse(&query["redirect_uri"]).unwrap();
                        back.query_pairs_mut().append_pair("code", "the-code").append_pair("state", &query["state"]);
                        Response::builder().status(302).header("location", back.as_str()).body(full("")).unwrap()
                    }
                    "/token" => {
                        let m = mint.lock().unwrap().clone();
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
                        let mut claims = json!({
                            "iss": issuer, "aud": client_id, "sub": "minted-subject", "exp": now + 300, "iat": now,
                            "nonce": nonce.lock().unwrap().clone(), "token_use": "id",
                            "cognito:username": "mallory", "email": "mallory@example.com", "name": "Mallory Minted",
                        });
                        if let (Some(base), Some(over)) = (claims.as_object_mut(), m.overrides.as_object()) {
                            for (k, v) in over {
                                if v.is_null() { base.remove(k); } else { base.insert(k.clone(), v.clone()); }
                            }
                        }
                        let token = sign(&m, &claims, &keys);
                        json_response(json!({ "id_token": token, "access_token": "opaque-access-token", "token_type": "Bearer" }))
                    }
                    _ => Response::builder().status(404).body(full("")).unwrap(),
                }
            }
        })
        .await;
        let issuer = format!("http://{addr}");
        *issuer_cell.lock().unwrap() = issuer.clone();
        MintingProvider {
            addr,
            issuer,
            mint,
            jwks_fetches,
        }
    }

    pub fn set(&self, mint: Mint) {
        *self.mint.lock().unwrap() = mint;
    }
}

fn new_key() -> Key {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let public = private.to_public_key();
    Key {
        private_pem: private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap().to_string(),
        public_pem: public.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap(),
        n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }
}

fn sign(m: &Mint, claims: &Value, keys: &[Key]) -> String {
    match m.signing {
        Signing::Rsa(i) => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(m.kid.clone());
            jsonwebtoken::encode(
                &header,
                claims,
                &EncodingKey::from_rsa_pem(keys[i].private_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        Signing::None => {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": m.kid}).to_string());
            format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
        }
        Signing::HmacWithPublicKey => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(m.kid.clone());
            jsonwebtoken::encode(
                &header,
                claims,
                &EncodingKey::from_secret(keys[0].public_pem.as_bytes()),
            )
            .unwrap()
        }
    }
}
