//! Azure IoT Hub over MQTT: the device's SAS token.
//!
//! A token proves possession of the device key for a resource until an
//! expiry: `SharedAccessSignature sr={uri}&sig={signature}&se={expiry}`, where
//! the signature is base64(HMAC-SHA256(base64-decoded key,
//! url-encoded(uri) + "\n" + expiry)) and every value is url-encoded the way
//! Python's `urllib.parse.quote_plus` does (Azure's documented reference).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `urllib.parse.quote_plus`: letters, digits and `_.-~` stay; space becomes
/// `+`; everything else `%XX` (upper-case hex).
pub fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The SAS token for `resource_uri` (e.g. `myhub.azure-devices.net/devices/line3`)
/// signed with the base64 `device_key`, valid until `expiry` (unix seconds).
pub fn sas_token(resource_uri: &str, device_key: &str, expiry: u64) -> Result<String, String> {
    let key = STANDARD.decode(device_key.trim()).map_err(|e| {
        format!("the device key is not base64 ({e}); copy the primary key from the IoT Hub device page")
    })?;
    let encoded_uri = quote_plus(resource_uri);
    let to_sign = format!("{encoded_uri}\n{expiry}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(to_sign.as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("SharedAccessSignature sr={encoded_uri}&sig={}&se={expiry}", quote_plus(&signature)))
}

/// The MQTT username IoT Hub expects.
pub fn username(hub: &str, device: &str) -> String {
    format!("{hub}/{device}/?api-version=2021-04-12")
}

/// Where device-to-cloud messages go, with the content-type property bag so
/// IoT Hub routing can read the JSON body.
pub fn events_topic(device: &str) -> String {
    format!("devices/{device}/messages/events/$.ct=application%2Fjson&$.ce=utf-8")
}

/// Cloud-to-device messages (used for inspection commands).
pub fn commands_topic(device: &str) -> String {
    format!("devices/{device}/messages/devicebound/#")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_plus_matches_python() {
        assert_eq!(
            quote_plus("myhub.azure-devices.net/devices/dev 1"),
            "myhub.azure-devices.net%2Fdevices%2Fdev+1"
        );
        assert_eq!(quote_plus("a+b/c=d~"), "a%2Bb%2Fc%3Dd~");
    }

    #[test]
    fn a_bad_key_says_what_to_do() {
        assert!(sas_token("h/devices/d", "not base64!", 1).unwrap_err().contains("primary key"));
    }
}
