//! The PAM conversation as a `flow::Conversation`.

use crate::flow::{ConvError, Conversation};
use crate::secret::Secret;
use ::pam::constants::{PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_TEXT_INFO};
use ::pam::conv::Conv;
use ::pam::module::PamHandle;

pub struct PamConv<'a> {
    conv: Conv<'a>,
    /// `PAM_SILENT`: the application asked for no messages (prompts still go out).
    silent: bool,
    /// The password part of a verified one-prompt answer, for PAM_AUTHTOK.
    password: Option<Secret>,
}

impl<'a> PamConv<'a> {
    pub fn from_handle(pamh: &'a PamHandle, silent: bool) -> Option<Self> {
        let conv = pamh.get_item::<Conv>().ok()??;
        Some(PamConv {
            conv,
            silent,
            password: None,
        })
    }

    pub fn take_password(&mut self) -> Option<Secret> {
        self.password.take()
    }
}

impl Conversation for PamConv<'_> {
    fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError> {
        match self.conv.send(PAM_PROMPT_ECHO_OFF, text) {
            // Invalid UTF-8 becomes U+FFFD, which no code contains: a wrong try, never sent.
            Ok(Some(answer)) => Ok(Secret::new(String::from_utf8_lossy(answer.as_bytes()))),
            Ok(None) => Ok(Secret::new("")),
            Err(code) => Err(ConvError(format!("the conversation failed ({code:?})"))),
        }
    }

    fn info(&mut self, text: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_TEXT_INFO, text);
        }
    }

    fn error(&mut self, text: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_ERROR_MSG, text);
        }
    }

    fn keep_password(&mut self, password: Secret) {
        self.password = Some(password);
    }
}
